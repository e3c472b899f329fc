"""jetsock's broker on NATS JetStream: rooms, stream, publish, replay, live feeds."""
