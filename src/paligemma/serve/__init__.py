"""The HTTP server: an OpenAI-compatible chat completions API, structured detect / segment, a web
page, and one request batcher in front of the model (`paligemma serve`, or `running` in a
`with` block). It is an edge: it may import the core, `tasks` and `pipeline`, and nothing above
them; inside, `app` builds the FastAPI app from module-level routers (`chat`, `detect`, `pages`)
over `settings`, `schemas`, `errors`, `middleware`, `images` (remote ones through `fetch`),
`checks`, `jobs`, and the schedulers: `batcher` (jobs and the queue), `engine` (continuous
batching over the KV pool of `slots`, with `rows` and `image_cache`) and `static_batcher`.
"""

from .app import create_app
from .run import running, serve, server_process
from .settings import Settings

__all__ = ["Settings", "create_app", "running", "serve", "server_process"]
