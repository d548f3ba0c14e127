"""eval.weights: verified, atomic, opt-out-able fetching of the standard metric weights.

Every download here comes from a loopback HTTP server (127.0.0.1, a free port, in a thread) serving
a small file; nothing reaches the internet (the autouse fixture points every URL at loopback).
"""

from __future__ import annotations

import glob
import hashlib
import http.server
import multiprocessing
import os
import socket
import threading
import time

import pytest

from eval import weights
from eval.weights import WEIGHTS, WeightSpec, WeightsUnavailable, ensure_weights

BLOB = bytes(range(256)) * 512  # 128 KiB
SPEC = WeightSpec(name="blob", filename="blob.bin", urls=("http://127.0.0.1:9/blob.bin",), size=len(BLOB),
                  sha256=hashlib.sha256(BLOB).hexdigest(), label="test blob")


class LoopbackServer:
    """Serves ``files[path] = (body, mode)``; modes: ok, short (half the body, then hang up),
    stall (half, then silence), gate (waits for ``gate`` before the body), slow (small pieces)."""

    def __init__(self):
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        self.gate = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                if self.path not in server.files:
                    self.send_error(404)
                    return
                body, mode = server.files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "gate":
                    server.gate.wait(10)
                if mode in ("short", "stall"):
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    if mode == "stall":
                        time.sleep(1.5)
                    return  # HTTP/1.0: the connection closes with fewer bytes than Content-Length
                step = 16384 if mode == "slow" else len(body)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    if mode == "slow":
                        time.sleep(0.02)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: connection refused


@pytest.fixture(autouse=True)
def _hermetic(tmp_path, monkeypatch):
    for var in ("MF_NO_DOWNLOAD", "HF_HUB_OFFLINE", "SYNCNET_WEIGHTS", "MF_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MF_WEIGHTS_BASE_URL", _refused_url())  # a test that forgets a server stays offline


@pytest.fixture()
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()


def _leftovers(folder) -> list[str]:
    return [p for p in glob.glob(os.path.join(folder, ".*")) if not p.endswith(".lock")]


def test_download_is_verified_cached_and_never_requested_again(server, tmp_path):
    server.files["/blob.bin"] = (BLOB, "ok")
    cache = str(tmp_path / "c")
    path = ensure_weights(SPEC, cache_dir=cache, base_url=server.url)
    assert path == os.path.join(cache, "blob.bin") and open(path, "rb").read() == BLOB
    assert ensure_weights(SPEC, cache_dir=cache, base_url=server.url) == path
    assert server.requests == ["/blob.bin"]  # the second call was served by the cache
    assert _leftovers(cache) == []


def test_checksum_mismatch_discards_the_file_and_names_both_hashes(server, tmp_path):
    forged = BLOB[:-1] + b"\x00"
    server.files["/blob.bin"] = (forged, "ok")
    cache = str(tmp_path / "c")
    with pytest.raises(WeightsUnavailable) as err:
        ensure_weights(SPEC, cache_dir=cache, base_url=server.url)
    msg = str(err.value)
    assert err.value.reason == "failed" and "blob.bin" in msg and "checksum mismatch" in msg
    assert SPEC.sha256 in msg and hashlib.sha256(forged).hexdigest() in msg
    assert not os.path.exists(os.path.join(cache, "blob.bin")) and _leftovers(cache) == []


def test_wrong_size_is_refused_before_the_body(server, tmp_path):
    server.files["/blob.bin"] = (BLOB + b"extra", "ok")
    with pytest.raises(WeightsUnavailable, match=f"announces {len(BLOB) + 5} bytes, expected {len(BLOB)}"):
        ensure_weights(SPEC, cache_dir=str(tmp_path / "c"), base_url=server.url)
    assert not os.path.exists(tmp_path / "c" / "blob.bin")


def test_interrupted_download_leaves_nothing_and_a_retry_succeeds(server, tmp_path):
    cache = str(tmp_path / "c")
    server.files["/blob.bin"] = (BLOB, "short")
    with pytest.raises(WeightsUnavailable, match="interrupted after 65536 of 131072 bytes") as err:
        ensure_weights(SPEC, cache_dir=cache, base_url=server.url)
    assert err.value.reason == "failed"
    assert not os.path.exists(os.path.join(cache, "blob.bin")) and _leftovers(cache) == []
    server.files["/blob.bin"] = (BLOB, "ok")
    assert open(ensure_weights(SPEC, cache_dir=cache, base_url=server.url), "rb").read() == BLOB


def test_stalled_download_times_out_and_leaves_nothing(server, tmp_path):
    server.files["/blob.bin"] = (BLOB, "stall")
    with pytest.raises(WeightsUnavailable, match="interrupted after 65536"):
        ensure_weights(SPEC, cache_dir=str(tmp_path / "c"), base_url=server.url, timeout=0.5)
    assert not os.path.exists(tmp_path / "c" / "blob.bin") and _leftovers(str(tmp_path / "c")) == []


def test_a_cached_file_with_the_wrong_size_is_fetched_again(server, tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "blob.bin").write_bytes(BLOB[:100])  # e.g. copied by hand and cut short
    server.files["/blob.bin"] = (BLOB, "ok")
    assert open(ensure_weights(SPEC, cache_dir=str(cache), base_url=server.url), "rb").read() == BLOB


def test_offline_gives_the_clear_message(tmp_path):
    with pytest.raises(WeightsUnavailable, match="offline") as err:
        ensure_weights(SPEC, cache_dir=str(tmp_path / "c"))
    assert err.value.reason == "offline" and not os.path.exists(tmp_path / "c" / "blob.bin")
    from eval.frechet import InceptionExtractor, InceptionUnavailable, missing_weights_message
    from eval.syncnet import SyncNetWeightsError, load_syncnet

    with pytest.raises(InceptionUnavailable) as inc:
        InceptionExtractor()  # downloads allowed, but nothing answers
    assert str(inc.value) == missing_weights_message() and str(tmp_path / "torch") in str(inc.value)
    with pytest.raises(SyncNetWeightsError, match="SYNCNET_WEIGHTS"):
        load_syncnet(None)


@pytest.mark.parametrize("how", ["MF_NO_DOWNLOAD", "HF_HUB_OFFLINE", "allow_download=False"])
def test_opt_out_makes_no_request(server, tmp_path, monkeypatch, how):
    server.files["/blob.bin"] = (BLOB, "ok")
    if how != "allow_download=False":
        monkeypatch.setenv(how, "1")
    with pytest.raises(WeightsUnavailable, match=f"downloads are off \\({how}\\)") as err:
        ensure_weights(SPEC, cache_dir=str(tmp_path / "c"), base_url=server.url,
                       allow_download=False if how == "allow_download=False" else None)
    assert err.value.reason == "disabled" and server.requests == []
    if how != "allow_download=False":
        assert weights.prefetch([SPEC]) is None and server.requests == []


def test_concurrent_callers_end_with_one_good_file_and_one_request(server, tmp_path):
    server.files["/blob.bin"] = (BLOB, "slow")
    cache = str(tmp_path / "c")
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_weights(SPEC, cache_dir=cache,
                                                                             base_url=server.url)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 4 and len(set(results)) == 1 and server.requests == ["/blob.bin"]
    assert open(results[0], "rb").read() == BLOB and _leftovers(cache) == []


def _fetch_in_child(cache, url, out):
    out.put(ensure_weights(SPEC, cache_dir=cache, base_url=url))


def test_concurrent_processes_make_one_download(server, tmp_path):
    server.files["/blob.bin"] = (BLOB, "slow")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child, args=(str(tmp_path / "c"), server.url, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    assert [p.exitcode for p in procs] == [0, 0] and server.requests == ["/blob.bin"]
    assert open(out.get(timeout=5), "rb").read() == BLOB


def test_background_prefetch_never_blocks_a_caller_that_may_not_download(server, tmp_path, monkeypatch):
    spec = WeightSpec(**{**SPEC.__dict__, "name": "blob-prefetch"})
    server.files["/blob.bin"] = (BLOB, "gate")
    monkeypatch.setenv("MF_WEIGHTS_BASE_URL", server.url)
    thread = weights.prefetch([spec])
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match="being downloaded in the background") as err:
        ensure_weights(spec, allow_download=False)  # what an app request does
    assert err.value.reason == "fetching" and time.perf_counter() - t0 < 2
    server.gate.set()
    thread.join(20)
    assert not thread.is_alive() and not weights.is_fetching(spec)
    assert open(ensure_weights(spec, allow_download=False), "rb").read() == BLOB


def test_app_request_during_prefetch_says_inception_is_being_fetched(monkeypatch):
    from eval.frechet import InceptionExtractor, InceptionUnavailable

    monkeypatch.setattr(weights, "_PENDING", {"inception"})
    with pytest.raises(InceptionUnavailable, match="FID/KID skipped: .* being downloaded in the background"):
        InceptionExtractor(allow_download=False)


def test_registry_checks_the_real_files_size_and_hash(server, tmp_path, monkeypatch):
    for spec in WEIGHTS.values():
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0 and spec.size > 1_000_000
        assert all(u.startswith(("https://", "http://")) for u in spec.urls)
    inception = WEIGHTS["inception"]  # torch hub convention: the name carries the sha256 prefix
    assert inception.filename.rsplit("-", 1)[1].split(".")[0] == inception.sha256[:8]
    server.files["/syncnet_v2.model"] = (BLOB, "ok")  # a wrong file where SyncNet should be
    monkeypatch.setenv("MF_WEIGHTS_BASE_URL", server.url)
    with pytest.raises(WeightsUnavailable, match=f"announces {len(BLOB)} bytes, expected 54573114"):
        ensure_weights("syncnet")
    assert not os.path.exists(os.path.join(os.environ["MF_CACHE"], "syncnet_v2.model"))


def test_named_paths_win_and_a_missing_one_is_an_error(tmp_path, monkeypatch):
    mine = tmp_path / "mine.model"
    mine.write_bytes(b"user supplied")
    assert ensure_weights("syncnet", mine) == str(mine)  # used as given: the loader checks its contents
    monkeypatch.setenv("SYNCNET_WEIGHTS", str(tmp_path / "gone.model"))
    with pytest.raises(WeightsUnavailable, match=r"not found: .*gone.model \(from \$SYNCNET_WEIGHTS\)") as err:
        ensure_weights("syncnet")
    assert err.value.reason == "path"


def test_cli_no_download_turns_downloads_off_everywhere(monkeypatch, tmp_path):
    from eval.__main__ import main

    assert main(["score", "--generated", str(tmp_path / "none"), "--no-download", "--quiet"]) == 2
    assert weights.downloads_disabled_by() == "MF_NO_DOWNLOAD"


def test_a_read_only_cache_folder_is_a_clear_error(server, tmp_path):
    if os.geteuid() == 0:
        cache = tmp_path / "file-not-folder"
        cache.write_bytes(b"")  # root ignores permissions: a file where the folder should be fails for anyone
    else:
        cache = tmp_path / "ro"
        cache.mkdir(mode=0o500)
    server.files["/blob.bin"] = (BLOB, "ok")
    with pytest.raises(WeightsUnavailable, match="could not be stored in the cache folder") as err:
        ensure_weights(SPEC, cache_dir=str(cache), base_url=server.url)
    assert err.value.reason == "failed"
