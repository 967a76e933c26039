"""The project's AMQP 1.0 test broker: Event Hubs and Service Bus entities for the real SDKs.

See entity.py for the entity plug-in interface and README.md for how to run it.
"""
