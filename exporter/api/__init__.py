"""The Copy.ai API: client (retries, rate limit, bounded bodies), transport (a deadline
for the whole exchange), errors, the records it answers and the webhook deliveries it
sends, parsed tolerantly, and the exporter's own webhook registrations."""
