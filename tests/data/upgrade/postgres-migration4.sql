--
-- PostgreSQL database dump
--


-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: perdure_upgrade_fixture; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA perdure_upgrade_fixture;


--
-- Name: instance_counts_deleted(); Type: FUNCTION; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE FUNCTION perdure_upgrade_fixture.instance_counts_deleted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
            BEGIN
                INSERT INTO "perdure_upgrade_fixture".instance_count_deltas (workflow, status, delta)
                SELECT workflow, status, -count(*) FROM deleted GROUP BY workflow, status;
                RETURN NULL;
            END $$;


--
-- Name: instance_counts_inserted(); Type: FUNCTION; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE FUNCTION perdure_upgrade_fixture.instance_counts_inserted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
            BEGIN
                INSERT INTO "perdure_upgrade_fixture".instance_count_deltas (workflow, status, delta)
                SELECT workflow, status, count(*) FROM inserted GROUP BY workflow, status;
                RETURN NULL;
            END $$;


--
-- Name: instance_counts_updated(); Type: FUNCTION; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE FUNCTION perdure_upgrade_fixture.instance_counts_updated() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
            BEGIN
                INSERT INTO "perdure_upgrade_fixture".instance_count_deltas (workflow, status, delta)
                VALUES (OLD.workflow, OLD.status, -1), (NEW.workflow, NEW.status, 1);
                RETURN NULL;
            END $$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: events; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.events (
    pk bigint NOT NULL,
    instance_pk bigint NOT NULL,
    type text NOT NULL,
    payload text NOT NULL,
    created_at double precision NOT NULL,
    consumed_by bigint
);


--
-- Name: events_pk_seq; Type: SEQUENCE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE SEQUENCE perdure_upgrade_fixture.events_pk_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: events_pk_seq; Type: SEQUENCE OWNED BY; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER SEQUENCE perdure_upgrade_fixture.events_pk_seq OWNED BY perdure_upgrade_fixture.events.pk;


--
-- Name: history; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.history (
    seq bigint NOT NULL,
    instance_pk bigint NOT NULL,
    type text NOT NULL,
    ts double precision NOT NULL,
    data text
);


--
-- Name: history_seq_seq; Type: SEQUENCE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE SEQUENCE perdure_upgrade_fixture.history_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: history_seq_seq; Type: SEQUENCE OWNED BY; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER SEQUENCE perdure_upgrade_fixture.history_seq_seq OWNED BY perdure_upgrade_fixture.history.seq;


--
-- Name: instance_count_deltas; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.instance_count_deltas (
    workflow text NOT NULL,
    status text NOT NULL,
    delta bigint NOT NULL
);

ALTER TABLE ONLY perdure_upgrade_fixture.instance_count_deltas REPLICA IDENTITY FULL;


--
-- Name: instance_counts; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.instance_counts (
    workflow text NOT NULL,
    status text NOT NULL,
    n bigint NOT NULL
);


--
-- Name: instances; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.instances (
    pk bigint NOT NULL,
    workflow text NOT NULL,
    id text NOT NULL,
    status text NOT NULL,
    params text NOT NULL,
    trigger text NOT NULL,
    schedule text,
    created_at double precision NOT NULL,
    started_at double precision,
    ended_at double precision,
    output text,
    error text,
    wake_at double precision,
    wait_types text,
    wake_requested boolean DEFAULT false NOT NULL,
    paused_at double precision,
    epoch bigint DEFAULT 0 NOT NULL,
    owner text,
    lease_until double precision
)
WITH (fillfactor='80');


--
-- Name: instances_pk_seq; Type: SEQUENCE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE SEQUENCE perdure_upgrade_fixture.instances_pk_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: instances_pk_seq; Type: SEQUENCE OWNED BY; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER SEQUENCE perdure_upgrade_fixture.instances_pk_seq OWNED BY perdure_upgrade_fixture.instances.pk;


--
-- Name: perdure_queue_dead; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.perdure_queue_dead (
    id bigint NOT NULL,
    queue text NOT NULL,
    message_id bigint NOT NULL,
    body text NOT NULL,
    attempts integer NOT NULL,
    created_at double precision NOT NULL,
    failed_at double precision NOT NULL,
    error text
);


--
-- Name: perdure_queue_dead_id_seq; Type: SEQUENCE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE SEQUENCE perdure_upgrade_fixture.perdure_queue_dead_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: perdure_queue_dead_id_seq; Type: SEQUENCE OWNED BY; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER SEQUENCE perdure_upgrade_fixture.perdure_queue_dead_id_seq OWNED BY perdure_upgrade_fixture.perdure_queue_dead.id;


--
-- Name: perdure_queue_messages; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.perdure_queue_messages (
    id bigint NOT NULL,
    queue text NOT NULL,
    body text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    created_at double precision NOT NULL,
    visible_at double precision NOT NULL,
    lease text,
    last_error text
);


--
-- Name: perdure_queue_messages_id_seq; Type: SEQUENCE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE SEQUENCE perdure_upgrade_fixture.perdure_queue_messages_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: perdure_queue_messages_id_seq; Type: SEQUENCE OWNED BY; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER SEQUENCE perdure_upgrade_fixture.perdure_queue_messages_id_seq OWNED BY perdure_upgrade_fixture.perdure_queue_messages.id;


--
-- Name: schema_migrations; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.schema_migrations (
    version integer NOT NULL,
    description text NOT NULL,
    applied_at double precision NOT NULL
);


--
-- Name: steps; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.steps (
    seq bigint NOT NULL,
    instance_pk bigint NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    count integer NOT NULL,
    status text NOT NULL,
    config text,
    attempts text NOT NULL,
    result text,
    error text,
    started_at double precision NOT NULL,
    ended_at double precision,
    wake_at double precision
)
WITH (fillfactor='80');


--
-- Name: steps_seq_seq; Type: SEQUENCE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE SEQUENCE perdure_upgrade_fixture.steps_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: steps_seq_seq; Type: SEQUENCE OWNED BY; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER SEQUENCE perdure_upgrade_fixture.steps_seq_seq OWNED BY perdure_upgrade_fixture.steps.seq;


--
-- Name: workflows; Type: TABLE; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TABLE perdure_upgrade_fixture.workflows (
    name text NOT NULL,
    class_name text NOT NULL,
    schedules text NOT NULL,
    step_limit integer NOT NULL,
    registered_at double precision NOT NULL,
    updated_at double precision NOT NULL
);


--
-- Name: events pk; Type: DEFAULT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.events ALTER COLUMN pk SET DEFAULT nextval('perdure_upgrade_fixture.events_pk_seq'::regclass);


--
-- Name: history seq; Type: DEFAULT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.history ALTER COLUMN seq SET DEFAULT nextval('perdure_upgrade_fixture.history_seq_seq'::regclass);


--
-- Name: instances pk; Type: DEFAULT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.instances ALTER COLUMN pk SET DEFAULT nextval('perdure_upgrade_fixture.instances_pk_seq'::regclass);


--
-- Name: perdure_queue_dead id; Type: DEFAULT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.perdure_queue_dead ALTER COLUMN id SET DEFAULT nextval('perdure_upgrade_fixture.perdure_queue_dead_id_seq'::regclass);


--
-- Name: perdure_queue_messages id; Type: DEFAULT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.perdure_queue_messages ALTER COLUMN id SET DEFAULT nextval('perdure_upgrade_fixture.perdure_queue_messages_id_seq'::regclass);


--
-- Name: steps seq; Type: DEFAULT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.steps ALTER COLUMN seq SET DEFAULT nextval('perdure_upgrade_fixture.steps_seq_seq'::regclass);


--
-- Data for Name: events; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.events VALUES (1, 5, 'gift-note', '{"note":"Alles Gute! 🎁","from":["Åsa","Jürgen"]}', 1796308941.3295944, NULL);


--
-- Data for Name: history; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.history VALUES (1, 1, 'WORKFLOW_QUEUED', 1796308941.1921265, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (2, 2, 'WORKFLOW_QUEUED', 1796308941.1921265, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (3, 3, 'WORKFLOW_QUEUED', 1796308941.197018, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (4, 4, 'WORKFLOW_QUEUED', 1796308941.2040436, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (5, 1, 'WORKFLOW_START', 1796308941.1925898, NULL);
INSERT INTO perdure_upgrade_fixture.history VALUES (6, 2, 'WORKFLOW_START', 1796308941.1925898, NULL);
INSERT INTO perdure_upgrade_fixture.history VALUES (7, 3, 'WORKFLOW_START', 1796308941.197018, NULL);
INSERT INTO perdure_upgrade_fixture.history VALUES (8, 5, 'WORKFLOW_QUEUED', 1796308941.2141292, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (9, 6, 'WORKFLOW_QUEUED', 1796308941.218779, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (10, 7, 'WORKFLOW_QUEUED', 1796308941.2257876, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (11, 4, 'WORKFLOW_START', 1796308941.222816, NULL);
INSERT INTO perdure_upgrade_fixture.history VALUES (12, 5, 'WORKFLOW_START', 1796308941.222816, NULL);
INSERT INTO perdure_upgrade_fixture.history VALUES (13, 6, 'WORKFLOW_START', 1796308941.222816, NULL);
INSERT INTO perdure_upgrade_fixture.history VALUES (14, 7, 'WORKFLOW_START', 1796308941.2257876, NULL);
INSERT INTO perdure_upgrade_fixture.history VALUES (15, 8, 'WORKFLOW_QUEUED', 1796308941.2464535, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (16, 9, 'WORKFLOW_QUEUED', 1796308941.2464535, '{"trigger":"binding"}');
INSERT INTO perdure_upgrade_fixture.history VALUES (17, 3, 'WORKFLOW_FAILURE', 1796308941.2500248, '{"error":{"name":"NonRetryableError","message":"card declined for order 3"}}');
INSERT INTO perdure_upgrade_fixture.history VALUES (18, 1, 'WORKFLOW_SUCCESS', 1796308941.2558477, '{"output":{"order":1,"amount":12.75,"tracking":"tracking-0001-\u00dcn\u00efc\u00f8d\u00e9-\u2708","items":[{"sku":"SKU-1","qty":1}]}}');
INSERT INTO perdure_upgrade_fixture.history VALUES (19, 2, 'WORKFLOW_SUCCESS', 1796308941.2558935, '{"output":{"order":2,"amount":25.25,"tracking":"tracking-0002-\u00dcn\u00efc\u00f8d\u00e9-\u2708","items":[{"sku":"SKU-2","qty":2}]}}');
INSERT INTO perdure_upgrade_fixture.history VALUES (20, 7, 'WORKFLOW_TERMINATED', 1796308941.352323, NULL);


--
-- Data for Name: instance_count_deltas; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', 2);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'queued', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'queued', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'queued', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'queued', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'running', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'queued', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'running', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'errored', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('report', 'queued', 2);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'complete', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'complete', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'waiting', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'running', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('orders', 'waiting', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'running', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'waiting', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'running', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'waiting', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'waiting', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'paused', 1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'waiting', -1);
INSERT INTO perdure_upgrade_fixture.instance_count_deltas VALUES ('greet', 'terminated', 1);


--
-- Data for Name: instance_counts; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--



--
-- Data for Name: instances; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.instances VALUES (8, 'report', 'report-1', 'queued', '{"month":"2025-01"}', 'binding', NULL, 1796308941.2464535, NULL, NULL, NULL, NULL, NULL, NULL, false, NULL, 0, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.instances VALUES (9, 'report', 'report-2', 'queued', '{"month":"2025-02"}', 'binding', NULL, 1796308941.2464535, NULL, NULL, NULL, NULL, NULL, NULL, false, NULL, 0, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.instances VALUES (3, 'orders', 'order-declined', 'errored', '{"order":3,"mode":"decline"}', 'binding', NULL, 1796308941.197018, 1796308941.197018, 1796308941.2500248, NULL, '{"name":"NonRetryableError","message":"card declined for order 3"}', NULL, NULL, false, NULL, 1, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.instances VALUES (1, 'orders', 'order-1', 'complete', '{"order":1,"mode":"complete"}', 'binding', NULL, 1796308941.1921265, 1796308941.1925898, 1796308941.2558477, '{"order":1,"amount":12.75,"tracking":"tracking-0001-Ünïcødé-✈","items":[{"sku":"SKU-1","qty":1}]}', NULL, NULL, NULL, false, NULL, 1, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.instances VALUES (2, 'orders', 'order-2', 'complete', '{"order":2,"mode":"complete","note":"Grüße 🚀"}', 'binding', NULL, 1796308941.1921265, 1796308941.1925898, 1796308941.2558935, '{"order":2,"amount":25.25,"tracking":"tracking-0002-Ünïcødé-✈","items":[{"sku":"SKU-2","qty":2}]}', NULL, NULL, NULL, false, NULL, 1, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.instances VALUES (4, 'orders', 'order-cooling', 'waiting', '{"order":4,"mode":"cool-down"}', 'binding', NULL, 1796308941.2040436, 1796308941.222816, NULL, NULL, NULL, 1796312541.2502818, NULL, false, NULL, 1, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.instances VALUES (5, 'orders', 'order-approval', 'waiting', '{"order":5,"mode":"approval"}', 'binding', NULL, 1796308941.2141292, 1796308941.222816, NULL, NULL, NULL, 1798900941.250327, 'approval', true, NULL, 1, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.instances VALUES (6, 'greet', 'greet-paused', 'paused', '{"name":"Zoë"}', 'binding', NULL, 1796308941.218779, 1796308941.222816, NULL, NULL, NULL, 1798900941.25036, 'go', false, 1796308941.3382146, 1, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.instances VALUES (7, 'greet', 'greet-terminated', 'terminated', '{"name":"Renée"}', 'binding', NULL, 1796308941.2257876, 1796308941.2257876, 1796308941.352323, NULL, NULL, NULL, NULL, false, NULL, 2, NULL, NULL);


--
-- Data for Name: perdure_queue_dead; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.perdure_queue_dead VALUES (1, 'mail', 6, '{"to":"bounce@example.com","subject":"Ça va?"}', 1, 1796308941.393475, 1796308941.3974845, '550 5.1.1 mailbox unavailable');


--
-- Data for Name: perdure_queue_messages; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.perdure_queue_messages VALUES (1, 'jobs', '{"job":"in-flight","attempt":"first","payload":{"a":[1,2,{"b":null}]}}', 1, 1796308941.3666282, 1827844941.3864646, 'deeaf0ac163c4b3d94ee2637d70e0569', NULL);
INSERT INTO perdure_upgrade_fixture.perdure_queue_messages VALUES (2, 'jobs', '{"job":"resize","image":{"id":7,"sizes":[64,128,256]},"tags":["thumb","web"]}', 0, 1796308941.3901432, 1796308941.3901432, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.perdure_queue_messages VALUES (3, 'jobs', '"Grüße aus Köln — 東京 — مرحبا 🚀"', 0, 1796308941.3901432, 1796308941.3901432, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.perdure_queue_messages VALUES (4, 'jobs', '[1,2.5,null,true,{"deep":{"deeper":{"deepest":"ünïcødé"}}}]', 0, 1796308941.3901432, 1796308941.3901432, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.perdure_queue_messages VALUES (5, 'jobs', '{"job":"later","at":"in an hour"}', 0, 1796308941.3922286, 1796312541.3922286, NULL, NULL);
INSERT INTO perdure_upgrade_fixture.perdure_queue_messages VALUES (7, 'mail', '{"to":"ok@example.com","n":2}', 0, 1796308941.393475, 1796308941.393475, NULL, NULL);


--
-- Data for Name: schema_migrations; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.schema_migrations VALUES (1, 'instances, steps, events, history', 1796308941.1495872);
INSERT INTO perdure_upgrade_fixture.schema_migrations VALUES (2, 'workflows registered by engines', 1796308941.1561234);
INSERT INTO perdure_upgrade_fixture.schema_migrations VALUES (3, 'index for instance id prefix search', 1796308941.1579366);
INSERT INTO perdure_upgrade_fixture.schema_migrations VALUES (4, 'instance counts by workflow and status, kept by triggers', 1796308941.1721263);


--
-- Data for Name: steps; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.steps VALUES (1, 1, 'do', 'validate', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.220339,"end":1796308941.220427,"error":null}]', '{"order":1,"valid":true,"items":[{"sku":"SKU-1","qty":1}]}', NULL, 1796308941.220324, 1796308941.220427, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (2, 2, 'do', 'validate', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.2206533,"end":1796308941.2207093,"error":null}]', '{"order":2,"valid":true,"items":[{"sku":"SKU-2","qty":2}]}', NULL, 1796308941.2206428, 1796308941.2207093, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (3, 3, 'do', 'validate', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.222531,"end":1796308941.2225974,"error":null}]', '{"order":3,"valid":true,"items":[{"sku":"SKU-3","qty":3}]}', NULL, 1796308941.2225204, 1796308941.2225974, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (4, 1, 'do', 'charge', 1, 'complete', '{"retries":{"limit":0,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.2296488,"end":1796308941.2297149,"error":null}]', '12.75', NULL, 1796308941.22964, 1796308941.2297149, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (5, 2, 'do', 'charge', 1, 'complete', '{"retries":{"limit":0,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.2297904,"end":1796308941.2298317,"error":null}]', '25.25', NULL, 1796308941.229784, 1796308941.2298317, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (6, 3, 'do', 'charge', 1, 'failed', '{"retries":{"limit":0,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.2340577,"end":1796308941.2341328,"error":{"name":"NonRetryableError","message":"card declined for order 3","module":"perdure.errors","qualname":"NonRetryableError"}}]', NULL, '{"name":"NonRetryableError","message":"card declined for order 3","module":"perdure.errors","qualname":"NonRetryableError"}', 1796308941.234048, 1796308941.2341328, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (7, 4, 'do', 'validate', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.238496,"end":1796308941.2385497,"error":null}]', '{"order":4,"valid":true,"items":[{"sku":"SKU-4","qty":4}]}', NULL, 1796308941.2384865, 1796308941.2385497, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (8, 5, 'do', 'validate', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.238765,"end":1796308941.238816,"error":null}]', '{"order":5,"valid":true,"items":[{"sku":"SKU-5","qty":5}]}', NULL, 1796308941.2387564, 1796308941.238816, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (9, 6, 'do', 'compose', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.2408082,"end":1796308941.2408638,"error":null}]', '"Hallo, Zoë!"', NULL, 1796308941.2407997, 1796308941.2408638, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (10, 1, 'do', 'ship', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.241555,"end":1796308941.241606,"error":null}]', '"tracking-0001-Ünïcødé-✈"', NULL, 1796308941.241547, 1796308941.241606, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (11, 2, 'do', 'ship', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.2416575,"end":1796308941.2416966,"error":null}]', '"tracking-0002-Ünïcødé-✈"', NULL, 1796308941.2416518, 1796308941.2416966, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (12, 7, 'do', 'compose', 1, 'complete', '{"retries":{"limit":5,"delay":"10 seconds","backoff":"exponential"},"timeout":"10 minutes"}', '[{"start":1796308941.2414129,"end":1796308941.2414725,"error":null}]', '"Hallo, Renée!"', NULL, 1796308941.2414038, 1796308941.2414725, NULL);
INSERT INTO perdure_upgrade_fixture.steps VALUES (13, 4, 'sleep', 'cool-down', 1, 'waiting', '{"duration":3600.0}', '[]', NULL, NULL, 1796308941.2502818, NULL, 1796312541.2502818);
INSERT INTO perdure_upgrade_fixture.steps VALUES (14, 5, 'waitForEvent', 'approval', 1, 'waiting', '{"type":"approval","timeout":2592000.0}', '[]', NULL, NULL, 1796308941.250327, NULL, 1798900941.250327);
INSERT INTO perdure_upgrade_fixture.steps VALUES (15, 6, 'waitForEvent', 'go-ahead', 1, 'waiting', '{"type":"go","timeout":2592000.0}', '[]', NULL, NULL, 1796308941.25036, NULL, 1798900941.25036);
INSERT INTO perdure_upgrade_fixture.steps VALUES (16, 7, 'waitForEvent', 'go-ahead', 1, 'waiting', '{"type":"go","timeout":2592000.0}', '[]', NULL, NULL, 1796308941.2557957, NULL, 1798900941.2557957);


--
-- Data for Name: workflows; Type: TABLE DATA; Schema: perdure_upgrade_fixture; Owner: -
--

INSERT INTO perdure_upgrade_fixture.workflows VALUES ('greet', 'Greet', '[]', 10000, 1796308941.173845, 1796308941.173845);
INSERT INTO perdure_upgrade_fixture.workflows VALUES ('orders', 'Orders', '["0 0 1 1 *"]', 10000, 1796308941.173845, 1796308941.173845);


--
-- Name: events_pk_seq; Type: SEQUENCE SET; Schema: perdure_upgrade_fixture; Owner: -
--

SELECT pg_catalog.setval('perdure_upgrade_fixture.events_pk_seq', 1, true);


--
-- Name: history_seq_seq; Type: SEQUENCE SET; Schema: perdure_upgrade_fixture; Owner: -
--

SELECT pg_catalog.setval('perdure_upgrade_fixture.history_seq_seq', 20, true);


--
-- Name: instances_pk_seq; Type: SEQUENCE SET; Schema: perdure_upgrade_fixture; Owner: -
--

SELECT pg_catalog.setval('perdure_upgrade_fixture.instances_pk_seq', 9, true);


--
-- Name: perdure_queue_dead_id_seq; Type: SEQUENCE SET; Schema: perdure_upgrade_fixture; Owner: -
--

SELECT pg_catalog.setval('perdure_upgrade_fixture.perdure_queue_dead_id_seq', 1, true);


--
-- Name: perdure_queue_messages_id_seq; Type: SEQUENCE SET; Schema: perdure_upgrade_fixture; Owner: -
--

SELECT pg_catalog.setval('perdure_upgrade_fixture.perdure_queue_messages_id_seq', 7, true);


--
-- Name: steps_seq_seq; Type: SEQUENCE SET; Schema: perdure_upgrade_fixture; Owner: -
--

SELECT pg_catalog.setval('perdure_upgrade_fixture.steps_seq_seq', 16, true);


--
-- Name: events events_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (pk);


--
-- Name: history history_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.history
    ADD CONSTRAINT history_pkey PRIMARY KEY (seq);


--
-- Name: instance_counts instance_counts_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.instance_counts
    ADD CONSTRAINT instance_counts_pkey PRIMARY KEY (workflow, status);


--
-- Name: instances instances_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.instances
    ADD CONSTRAINT instances_pkey PRIMARY KEY (pk);


--
-- Name: instances instances_workflow_id_key; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.instances
    ADD CONSTRAINT instances_workflow_id_key UNIQUE (workflow, id);


--
-- Name: perdure_queue_dead perdure_queue_dead_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.perdure_queue_dead
    ADD CONSTRAINT perdure_queue_dead_pkey PRIMARY KEY (id);


--
-- Name: perdure_queue_messages perdure_queue_messages_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.perdure_queue_messages
    ADD CONSTRAINT perdure_queue_messages_pkey PRIMARY KEY (id);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: steps steps_instance_pk_kind_name_count_key; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.steps
    ADD CONSTRAINT steps_instance_pk_kind_name_count_key UNIQUE (instance_pk, kind, name, count);


--
-- Name: steps steps_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.steps
    ADD CONSTRAINT steps_pkey PRIMARY KEY (seq);


--
-- Name: workflows workflows_pkey; Type: CONSTRAINT; Schema: perdure_upgrade_fixture; Owner: -
--

ALTER TABLE ONLY perdure_upgrade_fixture.workflows
    ADD CONSTRAINT workflows_pkey PRIMARY KEY (name);


--
-- Name: ix_events_pending; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_events_pending ON perdure_upgrade_fixture.events USING btree (instance_pk, type, consumed_by, pk);


--
-- Name: ix_history_instance; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_history_instance ON perdure_upgrade_fixture.history USING btree (instance_pk, seq);


--
-- Name: ix_instances_id_prefix; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_instances_id_prefix ON perdure_upgrade_fixture.instances USING btree (workflow, id COLLATE "C");


--
-- Name: ix_instances_leased; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_instances_leased ON perdure_upgrade_fixture.instances USING btree (lease_until) WHERE (status = ANY (ARRAY['running'::text, 'waitingForPause'::text]));


--
-- Name: ix_instances_list; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_instances_list ON perdure_upgrade_fixture.instances USING btree (workflow, status, pk);


--
-- Name: ix_instances_newest; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_instances_newest ON perdure_upgrade_fixture.instances USING btree (workflow, pk);


--
-- Name: ix_instances_owner; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_instances_owner ON perdure_upgrade_fixture.instances USING btree (owner) WHERE (owner IS NOT NULL);


--
-- Name: ix_instances_queued; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_instances_queued ON perdure_upgrade_fixture.instances USING btree (pk) WHERE (status = 'queued'::text);


--
-- Name: ix_instances_runnable; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_instances_runnable ON perdure_upgrade_fixture.instances USING btree (status, wake_at);


--
-- Name: ix_perdure_queue_dead; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_perdure_queue_dead ON perdure_upgrade_fixture.perdure_queue_dead USING btree (queue, id);


--
-- Name: ix_perdure_queue_ready; Type: INDEX; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE INDEX ix_perdure_queue_ready ON perdure_upgrade_fixture.perdure_queue_messages USING btree (queue, visible_at, id);


--
-- Name: instances instance_counts_delete; Type: TRIGGER; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TRIGGER instance_counts_delete AFTER DELETE ON perdure_upgrade_fixture.instances REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION perdure_upgrade_fixture.instance_counts_deleted();


--
-- Name: instances instance_counts_insert; Type: TRIGGER; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TRIGGER instance_counts_insert AFTER INSERT ON perdure_upgrade_fixture.instances REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION perdure_upgrade_fixture.instance_counts_inserted();


--
-- Name: instances instance_counts_update; Type: TRIGGER; Schema: perdure_upgrade_fixture; Owner: -
--

CREATE TRIGGER instance_counts_update AFTER UPDATE OF workflow, status ON perdure_upgrade_fixture.instances FOR EACH ROW WHEN (((old.status IS DISTINCT FROM new.status) OR (old.workflow IS DISTINCT FROM new.workflow))) EXECUTE FUNCTION perdure_upgrade_fixture.instance_counts_updated();


--
-- PostgreSQL database dump complete
--


