"""The event bus adapters: the relay's publishers (NATS JetStream, in process)."""
