"""Past one machine: sharded indexes, built and searched by Ray workers (optional: ``ray``)."""
