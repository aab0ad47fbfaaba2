"""Consumers for external message brokers that start workflow instances (see :mod:`perdure.queues`)."""
