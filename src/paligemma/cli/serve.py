"""`paligemma serve`: the HTTP server's flags onto its Settings, then serve."""

from __future__ import annotations

import argparse

from .common import DTYPES, MODEL_HELP, QUANT_CHOICES, UsageError


def add_parser(sub) -> None:
    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web page")
    srv.add_argument("--model", help=MODEL_HELP)
    srv.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", help="require Authorization: Bearer KEY (all but /health)")
    srv.add_argument("--max-batch", type=int, help="requests decoded together (default 16)")
    srv.add_argument(
        "--scheduler",
        choices=["continuous", "static"],
        help="continuous, the default: rows join and leave the batch at every step; static: "
        "a batch runs to its last row (the old batcher, for comparison)",
    )
    srv.add_argument(
        "--image-cache-mb", type=float, help="MB of cached image embeddings; 256 unless given"
    )
    srv.add_argument("--max-queue", type=int, help="waiting requests before 503 (default 64)")
    srv.add_argument("--timeout", type=float, help="seconds per request (default 120)")
    srv.add_argument("--max-tokens", type=int, help="most tokens a request may ask (default 512)")
    srv.add_argument("--allow-dir", help="serve file:// image URLs from this directory only")
    srv.add_argument(
        "--allow-remote-images",
        action="store_true",
        default=None,
        help="fetch http(s) image URLs. RISK: the server then makes requests on a client's "
        "behalf (SSRF); it refuses loopback, private, link-local, multicast and reserved "
        "addresses (also after redirects), caps size and time, and answers every failure alike",
    )
    srv.add_argument(
        "--allow-image-host",
        action="append",
        metavar="HOST_OR_CIDR",
        help="with --allow-remote-images, also fetch from this host name or network (e.g. "
        "10.0.0.0/8) although it is internal; repeatable. Only name hosts you trust clients "
        "to reach",
    )
    srv.add_argument("--dtype", choices=list(DTYPES))
    srv.add_argument("--quantize", choices=QUANT_CHOICES)
    srv.add_argument(
        "--adapter",
        action="append",
        metavar="[NAME=]DIR",
        help="LoRA adapter directory (ours or peft's). NAME=DIR (repeatable) serves it on the "
        "same base as the model NAME (a request's `model` field picks it; /v1/models lists "
        "them); a bare DIR puts one adapter on the model itself",
    )
    srv.add_argument(
        "--shutdown-timeout",
        type=float,
        help="on SIGTERM, seconds running requests get before they are cancelled: 30 if not given",
    )
    srv.add_argument(
        "--served-model-name",
        help="the model name clients send and /v1/models lists (default: the checkpoint "
        "directory's name, or paligemma-embedded)",
    )
    srv.set_defaults(run=run)


# `paligemma serve` flag -> server.Settings field. The flags default to None, so the limits'
# defaults live in one place, Settings (imported only by `serve`: it pulls in FastAPI).
SERVE_SETTINGS = {
    "api_key": "api_key",
    "max_batch": "max_batch",
    "max_queue": "max_queue",
    "scheduler": "scheduler",
    "image_cache_mb": "image_cache_mb",
    "timeout": "timeout_s",
    "shutdown_timeout": "shutdown_timeout_s",
    "max_tokens": "max_tokens",
    "allow_dir": "allow_dir",
    "allow_remote_images": "allow_remote",
}


def settings_from(args: argparse.Namespace):
    from ..serve import Settings

    given = {field: getattr(args, flag) for flag, field in SERVE_SETTINGS.items()}
    if args.allow_image_host:
        given["allow_image_hosts"] = tuple(args.allow_image_host)
    return Settings(**{k: v for k, v in given.items() if v is not None})


def run(args: argparse.Namespace) -> None:
    from ..serve import serve

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if args.allow_image_host and not args.allow_remote_images:
        raise UsageError("--allow-image-host needs --allow-remote-images")
    settings = settings_from(args)
    bare, named = adapters_from(args.adapter or [])
    serve(
        args.model,
        args.host,
        args.port,
        settings,
        DTYPES.get(args.dtype),
        args.quantize,
        bare,
        args.served_model_name,
        named,
    )


def adapters_from(flags: list[str]) -> tuple[str | None, dict[str, str]]:
    """--adapter flags -> (the one bare DIR or None, {NAME: DIR})."""
    named: dict[str, str] = {}
    is_named = [("=" in f and "/" not in f.partition("=")[0]) for f in flags]
    bare = [f for f, n in zip(flags, is_named, strict=True) if not n]
    for flag, n in zip(flags, is_named, strict=True):
        if n:
            name, _, path = flag.partition("=")
            if not name or not path or name in named:
                raise UsageError(f"--adapter {flag!r}: NAME=DIR with a new, non-empty NAME")
            named[name] = path
    if len(bare) > 1 or (bare and named):
        raise UsageError("--adapter: give every adapter a NAME=DIR, or one bare DIR")
    return (bare[0] if bare else None), named
