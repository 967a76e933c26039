"""evalstream's composition root: settings, CLI, and the wiring of adapters from settings."""
