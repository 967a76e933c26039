"""Event sources: the embedded log, Event Hubs, the child-process transport, batch delivery."""
