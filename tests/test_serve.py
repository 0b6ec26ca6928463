"""lslo-serve: a real server on 127.0.0.1 and a real HTTP client (aiohttp), over the shared tiny run."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, cli_env

aiohttp = pytest.importorskip("aiohttp", reason="the serve extra: pip install -e '.[serve]' (make install does)")

from fairseq_lslo.serve.batcher import DynamicBatcher  # noqa: E402


# --- the batcher alone (a recording translate function: no model) -------------------------

class Recorder:
    """translate(texts, srcs, tgts): records each call; a text 'boom' fails its call."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, srcs, tgts):
        self.calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("boom")
        time.sleep(0.01)
        return [f"{s}>{t}:{x}" for x, s, t in zip(texts, srcs, tgts)]


def run_jobs(batcher_args, jobs):
    """Submit ``jobs`` [(texts, src, tgt)] concurrently; (results or exceptions, recorded calls)."""
    recorder = Recorder()

    async def main():
        batcher = DynamicBatcher(recorder, *batcher_args)
        batcher.start()
        tasks = [batcher.submit(texts, [s] * len(texts), [t] * len(texts), [len(x.split()) + 2 for x in texts])
                 for texts, s, t in jobs]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        return results

    return asyncio.run(main()), recorder.calls


def test_concurrent_jobs_of_any_directions_share_one_call_and_get_their_own_results():
    jobs = [([f"a{i}", f"b{i}"], ["en", "fr", "de"][i % 3], ["de", "en", "fr"][i % 3]) for i in range(10)]
    results, calls = run_jobs((10_000, 0.2), jobs)
    assert len(calls) == 1 and len(calls[0]) == 20
    for (texts, s, t), got in zip(jobs, results):
        assert got == [f"{s}>{t}:{x}" for x in texts]


def test_a_batch_never_exceeds_max_batch_tokens_and_a_failure_stays_with_its_request():
    jobs = [([f"w{i} " * (i % 4 + 1)], "en", "de") for i in range(12)] + [(["boom"], "en", "fr")]
    results, calls = run_jobs((12, 0.2), jobs)
    for call in calls:  # padded tokens: longest x sentences
        assert len(call) == 1 or max(len(x.split()) + 2 for x in call) * len(call) <= 12
    assert len(calls) > 1 and isinstance(results[-1], RuntimeError)
    assert all(r == [f"en>de:{texts[0]}"] for r, (texts, _, _) in zip(results[:-1], jobs))


# --- a real server ---------------------------------------------------------------------------

class Server:
    """lslo-serve's serve() on 127.0.0.1 (a free port) in a thread of this process."""

    def __init__(self, translator, **config):
        from fairseq_lslo.serve.app import ServeConfig, Service
        from fairseq_lslo.serve.cli import serve

        self.service = Service(translator, ServeConfig(**config))
        ready = threading.Event()
        self.url = None

        def on_ready(host, port):
            self.url = f"http://{host}:{port}"
            ready.set()

        self.thread = threading.Thread(target=asyncio.run, args=(serve(self.service, "127.0.0.1", 0, 10, on_ready),),
                                       daemon=True)
        self.thread.start()
        assert ready.wait(30), "the server did not start"

    def stop(self):
        self.service.request_stop()
        self.thread.join(30)


@pytest.fixture(scope="module")
def translator(tiny_run):
    from fairseq_lslo import Translator

    return Translator.from_checkpoint(tiny_run.ckpt)


@pytest.fixture(scope="module")
def server(translator):
    s = Server(translator, max_wait_ms=100, max_input_tokens=40, beam=3)
    yield s
    s.stop()
    assert not s.thread.is_alive()


def sentences(tiny_run, lang):
    return open(os.path.join(tiny_run.raw, f"test.{lang}"), encoding="utf-8").read().splitlines()


async def post(session, url, body=None, data=None):
    async with session.post(url + "/translate", json=body, data=data) as r:
        return r.status, await r.json()


def test_concurrent_mixed_direction_requests_return_the_translators_outputs(server, translator, tiny_run):
    rng = random.Random(0)
    pairs = translator.directions
    requests = []
    for i in range(24):
        items = [(rng.choice(pairs), rng.randrange(12)) for _ in range(rng.randint(1, 3))]
        texts = [sentences(tiny_run, pair.split("-")[0])[k] for pair, k in items]
        srcs, tgts = [p.split("-")[0] for p, _ in items], [p.split("-")[1] for p, _ in items]
        if i % 3 == 0:  # codes per item as objects
            body = {"text": [{"text": x, "src": s, "tgt": t} for x, s, t in zip(texts, srcs, tgts)]}
        else:  # codes per item as lists
            body = {"src": srcs, "tgt": tgts, "text": texts}
        requests.append((body, texts, srcs, tgts))

    async def main():
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*[post(session, server.url, body) for body, *_ in requests])

    before = server.service.batcher.batches
    answers = asyncio.run(main())
    batches = server.service.batcher.batches - before
    for (_, texts, srcs, tgts), (status, body) in zip(requests, answers):
        assert status == 200, body
        assert body["translations"] == translator.translate(texts, srcs, tgts, beam=3)
    assert 1 <= batches < len(requests)  # requests shared batches
    assert len({t for _, (_, b) in zip(requests, answers) for t in b["translations"]}) >= 5  # not vacuous


def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_answering(server, tiny_run):
    good = {"src": "en", "tgt": "de", "text": sentences(tiny_run, "en")[:2]}
    long_text = " ".join(["en1"] * 60)
    cases = [
        (None, "{not json", 400, "body", "malformed JSON"),
        (["en", "de"], None, 400, "body", "expected a JSON object"),
        ({"src": "en", "tgt": "de"}, None, 400, "text", "missing"),
        ({"src": "en", "tgt": "de", "text": []}, None, 400, "text", "empty list"),
        ({"src": "en", "tgt": "de", "text": ["ok", 3]}, None, 400, "text[1]", "expected a string"),
        ({"src": "en", "tgt": "de", "text": ["ok", "  "]}, None, 400, "text[1]", "empty text"),
        ({"src": "en", "tgt": "xx", "text": ["ok"]}, None, 400, "tgt", "unknown language 'xx'; this model serves de, en, fr"),
        ({"tgt": "de", "text": ["ok"]}, None, 400, "src", "missing"),
        ({"src": ["en", "zz"], "tgt": "de", "text": ["a", "b"]}, None, 400, "src[1]", "unknown language 'zz'"),
        ({"src": ["en"], "tgt": "de", "text": ["a", "b"]}, None, 400, "src", "a list of 1 codes for 2 texts"),
        ({"src": "en", "tgt": "en", "text": ["ok"]}, None, 400, "tgt", "direction en-en is not served"),
        ({"tgt": "de", "text": [{"text": "ok", "src": 5}]}, None, 400, "text[0].src", "expected a language code"),
        ({"src": "en", "tgt": "de", "text": ["ok", long_text]}, None, 413, "text[1]", "more than --max-input-tokens 40"),
    ]

    async def main():
        async with aiohttp.ClientSession() as session:
            for body, data, status, field, message in cases:
                got_status, got = await post(session, server.url, body, data)
                assert (got_status, got["field"]) == (status, field), (body, data, got)
                assert message in got["error"], got
                # the server still answers, correctly
                got_status, got = await post(session, server.url, good)
                assert got_status == 200 and len(got["translations"]) == 2
            async with session.get(server.url + "/nowhere") as r:
                assert r.status == 404 and "error" in await r.json()
            async with session.get(server.url + "/languages") as r:
                body = await r.json()
                assert body["languages"] == ["de", "en", "fr"] and "fr-de" in body["directions"]
            async with session.get(server.url + "/health") as r:
                body = await r.json()
                assert body["status"] == "ok" and body["queued"] == 0

    asyncio.run(main())


def test_sigterm_answers_the_request_in_flight_then_exits(tiny_run, translator):
    proc = subprocess.Popen([sys.executable, "-m", "fairseq_lslo.serve", tiny_run.ckpt, "--port", "0", "--beam", "3",
                             "--max-wait-ms", "30000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert "serving 3 languages (6 directions) on http://127.0.0.1:" in line, line + proc.stderr.read()[-3000:]
        url = line.strip().rsplit(" ", 1)[1]
        texts = sentences(tiny_run, "fr")[:3]

        async def main():
            async with aiohttp.ClientSession() as session:
                pending = asyncio.ensure_future(post(session, url, {"src": "fr", "tgt": "en", "text": texts}))
                for _ in range(500):  # the request waits in the queue (--max-wait-ms 30000) until SIGTERM
                    async with session.get(url + "/health") as r:
                        if (await r.json())["queued"] == 1:
                            break
                    await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                return await pending

        status, body = asyncio.run(main())
        assert status == 200 and body["translations"] == translator.translate(texts, "fr", "en", beam=3)
        assert proc.wait(20) == 0  # without draining on SIGTERM it would wait 30 s
        assert "stopped after 3 sentences in 1 batches" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_command_lines_are_one_error_line(tmp_path, capsys):
    from fairseq_lslo.serve.cli import main

    missing = str(tmp_path / "nope.pt")
    assert main([missing]) == 2
    assert capsys.readouterr().err.strip() == f"lslo-serve: error: CHECKPOINT {missing}: no such checkpoint file"
    assert main([missing, "--max-input-tokens", "600", "--max-batch-tokens", "500"]) == 2
    assert "--max-input-tokens 600 is more than --max-batch-tokens 500" in capsys.readouterr().err
