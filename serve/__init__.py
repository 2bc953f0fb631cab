"""The HTTP search service: the one search pipeline behind FastAPI, with click capture into a
durable click log, Prometheus metrics and hot reload (``search-cli serve``)."""
