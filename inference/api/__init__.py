"""HTTP serving of the paged engine: an OpenAI-compatible API (`server`) over one thread that owns the
engine (`loop`), with the request parsing and error shapes of the API (`protocol`)."""
