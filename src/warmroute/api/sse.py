"""Server-sent event responses: the headers and media type (the streams themselves:
`bare_asgi.send_stream`, `surface_stream`). The event codec itself is `warmroute.sse`."""

from __future__ import annotations

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream"
