// Marks the page as scripted before it renders (no flash of the no-JS layout); a file, not an
// inline script, so the Content-Security-Policy can forbid inline scripts.
document.documentElement.className = "js";
