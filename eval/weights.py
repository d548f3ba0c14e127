"""Standard metric weights that are not shipped: find them, fetch them once, verify them, cache them.

Owns the registry ``WEIGHTS`` of the two public files the standard metrics need, and
``ensure_weights(name, path=None, ...) -> local path``:

1. an explicit ``path`` (must exist, used as given), else the file named by the spec's environment
   variable ($MF_INCEPTION_WEIGHTS / $SYNCNET_WEIGHTS; must exist when set), else
2. the cache: Inception in torch's hub cache ($TORCH_HOME/hub/checkpoints, so a copy torch-fidelity or
   pytorch-fid already fetched is reused), SyncNet in the project cache ($MF_CACHE, else
   $XDG_CACHE_HOME/mutual-forcing, else ~/.cache/mutual-forcing). A cached file must have the
   expected size (checked on every use; a wrong size is re-fetched, never loaded), else
3. a download, when allowed: each URL in turn, streamed into a hidden temp file in the cache folder
   while hashing; the byte count must equal both Content-Length and the registry size, the sha256
   must equal the registry hash; only then ``os.replace`` moves it to its final name (atomic on one
   file system). Whatever goes wrong (checksum, short body, dropped connection, timeout) the temp file
   is deleted, so the final path holds a verified file or nothing. A per-file thread lock plus an
   ``fcntl.flock`` on a lock file next to it serialise concurrent callers (threads and processes):
   the second caller waits, then finds the verified file and makes no request.

Downloads are off when ``allow_download=False`` (the CLI's --no-download), when $MF_NO_DOWNLOAD is
set to anything but "", "0", "false", "no", or when $HF_HUB_OFFLINE is (Hugging Face's offline hint).
``prefetch()`` fetches every registered file in a daemon thread (the app calls it at startup);
meanwhile a caller that may not download gets reason "fetching" instead of waiting.
$MF_WEIGHTS_BASE_URL replaces every registered URL by <base>/<file name> (a mirror, or the tests'
loopback server). Failures raise ``WeightsUnavailable`` with a ``reason`` the metric modules turn
into their own user-facing message: "path", "disabled", "fetching", "offline" or "failed".

Sizes and sha256 come from public records (the torch hub file name carries the first 8 hex digits of
the Inception hash, 6726825d, and several independent public projects pin the same full hashes and
sizes); nothing here was computed on this machine, which has no internet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import http.client
import logging
import os
import tempfile
import threading
import urllib.error
import urllib.request

try:
    import fcntl
except ImportError:  # Windows: the thread lock still serialises one process
    fcntl = None

log = logging.getLogger("mf.weights")

NO_DOWNLOAD_ENV = "MF_NO_DOWNLOAD"
BASE_URL_ENV = "MF_WEIGHTS_BASE_URL"
CACHE_ENV = "MF_CACHE"
DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One public weight file: where it comes from and what it must be, byte for byte."""

    name: str
    filename: str
    urls: tuple[str, ...]
    size: int
    sha256: str
    env: str | None = None
    cache: str = "project"  # "torch_hub": $TORCH_HOME/hub/checkpoints, "project": the project cache
    aliases: tuple[str, ...] = ()  # other names the same bytes go by in a cache folder
    label: str = ""


WEIGHTS: dict[str, WeightSpec] = {
    "inception": WeightSpec(
        name="inception",
        filename="weights-inception-2015-12-05-6726825d.pth",
        # torch-fidelity's release asset (URL_INCEPTION_V3 in torch_fidelity/feature_extractor_inceptionv3.py);
        # pytorch-fid publishes the same bytes under another name, used when the first host fails.
        urls=("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
              "weights-inception-2015-12-05-6726825d.pth",
              "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
              "pt_inception-2015-12-05-6726825d.pth"),
        size=95_628_359,
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        env="MF_INCEPTION_WEIGHTS",
        cache="torch_hub",
        aliases=("pt_inception-2015-12-05-6726825d.pth",),
        label="Inception-v3 (FID/KID)",
    ),
    "syncnet": WeightSpec(
        name="syncnet",
        filename="syncnet_v2.model",
        # The address in joonson/syncnet_python's download_model.sh (over https, then as written),
        # then ByteDance's LatentSync-1.6 copy on Hugging Face (same bytes, same hash enforced).
        urls=("https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
              "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
              "https://huggingface.co/ByteDance/LatentSync-1.6/resolve/main/auxiliary/syncnet_v2.model"),
        size=54_573_114,
        sha256="961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442",
        env="SYNCNET_WEIGHTS",
        cache="project",
        label="SyncNet v2 (LSE-C/D)",
    ),
}


class WeightsUnavailable(RuntimeError):
    """The weights cannot be had now. ``reason``: path | disabled | fetching | offline | failed."""

    def __init__(self, message: str, *, reason: str, spec: WeightSpec, path: str | None = None):
        super().__init__(message)
        self.reason, self.spec, self.path = reason, spec, path


# ----------------------------------------------------------------------------- settings
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def downloads_disabled_by() -> str | None:
    """The environment variable that turns downloads off, or None when they are allowed."""
    for var in (NO_DOWNLOAD_ENV, "HF_HUB_OFFLINE"):
        if _truthy(os.environ.get(var)):
            return var
    return None


def project_cache_dir() -> str:
    """$MF_CACHE, else $XDG_CACHE_HOME/mutual-forcing, else ~/.cache/mutual-forcing."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mutual-forcing")


def cache_dir_for(spec: WeightSpec) -> str:
    if spec.cache == "torch_hub":
        import torch.hub  # honours $TORCH_HOME and torch.hub.set_dir, like torch-fidelity's own cache

        return os.path.join(torch.hub.get_dir(), "checkpoints")
    return project_cache_dir()


def urls_for(spec: WeightSpec, base_url: str | None = None) -> tuple[str, ...]:
    base = base_url or os.environ.get(BASE_URL_ENV)
    return (f"{base.rstrip('/')}/{spec.filename}",) if base else spec.urls


def _spec(name: str | WeightSpec) -> WeightSpec:
    if isinstance(name, WeightSpec):
        return name
    if name not in WEIGHTS:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


# ----------------------------------------------------------------------------- locking
_GUARD = threading.Lock()
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_PENDING: set[str] = set()  # names queued by prefetch() in this process and not finished yet


def _lock_path(final: str) -> str:
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.lock")


@contextlib.contextmanager
def _exclusive(final: str):
    """Held while one caller checks and fills ``final``: a thread lock, then a flock across processes."""
    with _GUARD:
        lock = _THREAD_LOCKS.setdefault(final, threading.Lock())
    with lock:
        fd = os.open(_lock_path(final), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def is_fetching(name: str | WeightSpec, cache_dir: str | None = None) -> bool:
    """True while a prefetch is queued in this process or any process holds the file's download lock."""
    spec = _spec(name)
    if spec.name in _PENDING:
        return True
    final = os.path.join(cache_dir or cache_dir_for(spec), spec.filename)
    with _GUARD:
        held_here = final in _THREAD_LOCKS and _THREAD_LOCKS[final].locked()
    if held_here or fcntl is None:
        return held_here
    try:
        fd = os.open(_lock_path(final), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- lookup
def _cached(spec: WeightSpec, folder: str) -> tuple[str | None, str | None]:
    """(path of a cached copy with the right size, path of a copy with a wrong size)."""
    wrong = None
    for fname in (spec.filename, *spec.aliases):
        candidate = os.path.join(folder, fname)
        if os.path.isfile(candidate):
            if os.path.getsize(candidate) == spec.size:
                return candidate, None
            wrong = wrong or candidate
    return None, wrong


def _given(spec: WeightSpec, path) -> str | None:
    """The explicit path or the environment variable's file; a named file that is missing is an error."""
    if path is not None and os.fspath(path) != "":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise WeightsUnavailable(f"{spec.label} weights file not found: {path}", reason="path", spec=spec,
                                     path=path)
        return path
    env = os.environ.get(spec.env, "") if spec.env else ""
    if env:
        if not os.path.isfile(env):
            raise WeightsUnavailable(f"{spec.label} weights file not found: {env} (from ${spec.env})",
                                     reason="path", spec=spec, path=env)
        return env
    return None


def fetching_message(name: str | WeightSpec) -> str:
    spec = _spec(name)
    return (f"{spec.label} weights ({spec.filename}, {spec.size / 1e6:.1f} MB) are being downloaded in the "
            "background; score again in a minute or two")


def ensure_weights(name: str | WeightSpec, path=None, *, cache_dir: str | None = None,
                   allow_download: bool | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                   base_url: str | None = None) -> str:
    """Local path of verified weights ``name`` (see the module docstring for the order and the checks).

    ``allow_download``: None or True = download when the environment allows it; False = never.
    Raises ``WeightsUnavailable``; never leaves a partial file at the final path.
    """
    spec = _spec(name)
    given = _given(spec, path)
    if given:
        return given
    folder = cache_dir or cache_dir_for(spec)
    found, wrong = _cached(spec, folder)
    if found:
        return found
    blocker = "allow_download=False" if allow_download is False else downloads_disabled_by()
    where = os.path.join(folder, spec.filename)
    if blocker:
        if is_fetching(spec, folder):
            raise WeightsUnavailable(fetching_message(spec), reason="fetching", spec=spec)
        bad = f" ({os.path.basename(wrong)} in the cache has the wrong size: an interrupted copy?)" if wrong else ""
        raise WeightsUnavailable(f"{spec.label} weights ({spec.filename}) not found and downloads are off "
                                 f"({blocker}){bad}", reason="disabled", spec=spec, path=where)
    try:
        os.makedirs(folder, exist_ok=True)
        with _exclusive(where):
            found, _ = _cached(spec, folder)  # another caller may have finished while we waited
            if found:
                return found
            _remove_stale_parts(where)
            return _download(spec, where, urls_for(spec, base_url), timeout)
    except OSError as exc:  # read-only or full cache folder: a clear reason, never a traceback
        raise WeightsUnavailable(f"{spec.label} weights ({spec.filename}) could not be stored in the cache folder "
                                 f"({exc.__class__.__name__}: {exc.strerror or exc}); set "
                                 f"{'$TORCH_HOME' if spec.cache == 'torch_hub' else '$' + CACHE_ENV} to a writable "
                                 "folder", reason="failed", spec=spec, path=where) from None


# ----------------------------------------------------------------------------- download
class _Attempt(Exception):
    def __init__(self, message: str, offline: bool = False):
        super().__init__(message)
        self.offline = offline


def _remove_stale_parts(final: str) -> None:
    """Temp files left by a killed process (we hold the lock, so nobody is writing them)."""
    for part in glob.glob(os.path.join(os.path.dirname(final), f".{glob.escape(os.path.basename(final))}.*.part")):
        with contextlib.suppress(OSError):
            os.remove(part)


def _download(spec: WeightSpec, final: str, urls: tuple[str, ...], timeout: float) -> str:
    problems, all_offline = [], True
    for url in urls:
        try:
            _fetch_one(spec, url, final, timeout)
            log.warning("%s downloaded and verified (sha256 %s)", spec.filename, spec.sha256[:12])
            return final
        except _Attempt as exc:
            problems.append(str(exc))
            all_offline = all_offline and exc.offline
            (log.info if exc.offline else log.warning)("%s", exc)  # offline: the caller's message says it all
    if all_offline:
        raise WeightsUnavailable(f"{spec.label} weights ({spec.filename}) not found and the machine is offline "
                                 f"({problems[-1]})", reason="offline", spec=spec, path=final)
    raise WeightsUnavailable(f"{spec.label} weights ({spec.filename}) could not be downloaded: " + "; ".join(problems),
                             reason="failed", spec=spec, path=final)


def _fetch_one(spec: WeightSpec, url: str, final: str, timeout: float) -> None:
    """Stream ``url`` into a temp file next to ``final``, verify, then rename; the temp file never survives."""
    fd, part = tempfile.mkstemp(dir=os.path.dirname(final), prefix=f".{spec.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            received, actual = _stream(spec, url, out, timeout, os.path.dirname(final))
            out.flush()
            os.fsync(out.fileno())
        if received != spec.size:
            raise _Attempt(f"{spec.filename} from {url}: received {received} bytes, expected {spec.size}")
        if actual != spec.sha256:
            raise _Attempt(f"{spec.filename} from {url}: checksum mismatch: sha256 {actual}, expected {spec.sha256}; "
                           "the download was discarded")
        os.replace(part, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)


def _stream(spec: WeightSpec, url: str, out, timeout: float, folder: str) -> tuple[int, str]:
    """(bytes received, their sha256). Connection failures before any byte are 'offline'."""
    digest, received = hashlib.sha256(), 0
    request = urllib.request.Request(url, headers={"User-Agent": "mutual-forcing-eval"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https/http URLs from the registry
    except urllib.error.HTTPError as exc:
        raise _Attempt(f"{spec.filename} from {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Attempt(f"{spec.filename} from {url}: {exc.reason}", offline=True) from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets during the handshake
        raise _Attempt(f"{spec.filename} from {url}: {exc.__class__.__name__}: {exc}", offline=True) from None
    with response:
        log.warning("downloading %s (%.1f MB, once) from %s into %s", spec.filename, spec.size / 1e6, url,
                    folder)
        announced = response.headers.get("Content-Length")
        if announced is not None and announced.strip().isdigit() and int(announced) != spec.size:
            raise _Attempt(f"{spec.filename} from {url}: the server announces {announced} bytes, expected {spec.size}")
        try:
            while chunk := response.read1(_CHUNK):  # what has arrived, so a stall counts its bytes
                received += len(chunk)
                if received > spec.size:
                    raise _Attempt(f"{spec.filename} from {url}: more than the expected {spec.size} bytes")
                digest.update(chunk)
                out.write(chunk)
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead mid-body
            raise _Attempt(f"{spec.filename} from {url}: download interrupted after {received} of {spec.size} bytes "
                           f"({exc.__class__.__name__})") from None
    if announced is not None and announced.strip().isdigit() and received != int(announced):
        raise _Attempt(f"{spec.filename} from {url}: download interrupted after {received} of {announced} bytes")
    return received, digest.hexdigest()


# ----------------------------------------------------------------------------- background
def prefetch(names=tuple(WEIGHTS), *, timeout: float = DEFAULT_TIMEOUT_S) -> threading.Thread | None:
    """Fetch ``names`` one after another in a daemon thread; None when downloads are off by environment.

    Never raises: failures (offline, checksum) are logged, and callers then get the usual messages.
    """
    blocker = downloads_disabled_by()
    if blocker:
        log.info("standard weights are not prefetched: downloads are off (%s)", blocker)
        return None
    specs = [_spec(n) for n in names]
    with _GUARD:
        _PENDING.update(s.name for s in specs)

    def run():
        for spec in specs:
            try:
                ensure_weights(spec, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - a background fetch must never kill the app
                log.warning("prefetch of %s failed: %s", spec.filename, exc)
            finally:
                with _GUARD:
                    _PENDING.discard(spec.name)

    thread = threading.Thread(target=run, name="mf-weights-prefetch", daemon=True)
    thread.start()
    return thread

