"""Eval sets: collect media files from a zip, a folder or a list of files, safely, and pair them.

What this module owns:

* ``load_set(source)``: ``source`` is a path to a ``.zip``, a folder (searched recursively), one media
  file, or a list of any of these (e.g. Gradio uploads). Returns a ``ClipSet`` of ``SetEntry(name,
  path, kind)`` keyed by file stem, plus ``errors`` (one row per file that cannot take part, naming
  the file and the reason). Files are not decoded here; ``score`` reads them through ``mf.media``.
* Zip safety, before anything is written: entries with absolute paths, drive letters or ``..``
  components, symlink entries (Unix mode in ``external_attr``), more than ``MAX_ZIP_FILES`` files or
  more than ``MAX_ZIP_BYTES`` uncompressed in total make the whole archive refused with
  ``UnsafeArchiveError``. Accepted archives are extracted into a fresh directory (inside ``workdir``
  when given, e.g. the app's per-request folder, else the system temp dir; removed by
  ``ClipSet.cleanup()``), with a running byte count so a lying header cannot exceed the cap.
* ``pair_sets(generated, reference)``: pairs by stem; names present on one side only become error
  rows ("no reference named ..."), the rest go on.

File types: ``mf.media.VIDEO_EXTS`` (video containers) and ``mf.media.AUDIO_EXTS`` (audio-only files,
which take part in PESQ/STOI only), the project's one list. Hidden files and macOS resource forks
(``__MACOSX/``, ``._*``, ``.DS_Store``) are skipped
silently; any other unsupported file gets an error row.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath

from mf.media import AUDIO_EXTS, MEDIA_EXTS, VIDEO_EXTS

# Caps on an uploaded archive: a generous eval set (500 clips of a few MB) fits, a zip bomb does not.
MAX_ZIP_BYTES = 2 * 1024**3  # 2 GiB uncompressed in total
MAX_ZIP_FILES = 500


class SetError(Exception):
    """A set as a whole cannot be used (missing path, unsafe or corrupt archive)."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{os.path.basename(str(path)) or path}: {reason}")


class UnsafeArchiveError(SetError):
    """A zip refused for safety; nothing was extracted."""


@dataclass
class SetEntry:
    name: str  # file stem: the pairing key
    path: str  # on-disk path (inside the extraction dir for zips)
    kind: str  # "video" or "audio"
    display: str = ""  # what to call it in error rows / tables (the original file name)

    def __post_init__(self):
        self.display = self.display or os.path.basename(self.path)


@dataclass
class ErrorRow:
    name: str
    file: str
    error: str

    def to_dict(self) -> dict:
        return {"name": self.name, "file": self.file, "error": self.error}


@dataclass
class ClipSet:
    entries: dict[str, SetEntry] = field(default_factory=dict)
    errors: list[ErrorRow] = field(default_factory=list)
    temp_dirs: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.temp_dirs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def __len__(self):
        return len(self.entries)


@dataclass
class Pair:
    name: str
    generated: SetEntry
    reference: SetEntry | None


def _skipped(relpath: str) -> bool:
    parts = PurePosixPath(relpath.replace("\\", "/")).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or PurePosixPath(name).is_absolute():
        return f"entry '{name}' has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return f"entry '{name}' escapes the archive with '..'"
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_ISLNK(mode):
        return f"entry '{name}' is a symbolic link"
    return None


def check_zip(path: str, *, max_bytes: int | None = None, max_files: int | None = None) -> list[zipfile.ZipInfo]:
    """The archive's file entries if it is safe to extract, else ``UnsafeArchiveError``."""
    max_bytes = MAX_ZIP_BYTES if max_bytes is None else max_bytes
    max_files = MAX_ZIP_FILES if max_files is None else max_files
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SetError(path, f"not a readable zip archive ({exc})") from exc
    for info in infos:
        reason = _unsafe_reason(info)
        if reason:
            raise UnsafeArchiveError(path, f"refused: {reason}")
    files = [i for i in infos if not i.is_dir()]
    if len(files) > max_files:
        raise UnsafeArchiveError(path, f"refused: {len(files)} files, more than the cap of {max_files}")
    total = sum(i.file_size for i in files)
    if total > max_bytes:
        raise UnsafeArchiveError(path, f"refused: {total / 1e6:.1f} MB uncompressed, more than the cap of "
                                       f"{max_bytes / 1e6:.1f} MB")
    return files


def extract_zip(path: str, *, max_bytes: int | None = None, max_files: int | None = None,
                workdir: str | None = None) -> str:
    """Check, then extract into a fresh dir under ``workdir`` (default: system temp); returns that dir
    (the caller removes it)."""
    max_bytes = MAX_ZIP_BYTES if max_bytes is None else max_bytes
    files = check_zip(path, max_bytes=max_bytes, max_files=max_files)
    out = tempfile.mkdtemp(prefix="unzipped-", dir=workdir)
    written = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in files:
                rel = PurePosixPath(info.filename.replace("\\", "/"))
                target = os.path.join(out, *rel.parts)
                # Belt and braces: the resolved target must stay inside the extraction dir.
                if os.path.commonpath([os.path.realpath(target), os.path.realpath(out)]) != os.path.realpath(out):
                    raise UnsafeArchiveError(path, f"refused: entry '{info.filename}' resolves outside the archive")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    while True:
                        block = src.read(1 << 20)
                        if not block:
                            break
                        written += len(block)
                        if written > max_bytes:
                            raise UnsafeArchiveError(path, f"refused: data exceeds the cap of {max_bytes / 1e6:.1f} MB")
                        dst.write(block)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise SetError(path, f"corrupt zip archive ({exc})") from exc
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _add_file(cs: ClipSet, path: str, display: str) -> None:
    ext = os.path.splitext(path)[1].lower()
    stem = os.path.splitext(os.path.basename(path))[0]
    if ext in VIDEO_EXTS:
        kind = "video"
    elif ext in AUDIO_EXTS:
        kind = "audio"
    else:
        cs.errors.append(ErrorRow(stem, display, f"{display}: unsupported file type '{ext or '(none)'}' "
                                  f"(expected {', '.join(MEDIA_EXTS)})"))
        return
    if stem in cs.entries:
        other = cs.entries[stem].display
        cs.errors.append(ErrorRow(stem, display, f"{display}: duplicate name: '{other}' has the same stem; "
                                  "pairing is by file name, rename one"))
        return
    cs.entries[stem] = SetEntry(stem, path, kind, display)


def _walk(cs: ClipSet, folder: str, prefix: str = "") -> None:
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        for n in sorted(names):
            rel = os.path.relpath(os.path.join(root, n), folder)
            if _skipped(rel):
                continue
            _add_file(cs, os.path.join(root, n), os.path.join(prefix, rel) if prefix else rel)


def load_set(source, *, max_zip_bytes: int | None = None, max_zip_files: int | None = None,
             workdir: str | None = None) -> ClipSet:
    """Collect the files of a set. Raises ``SetError`` only for a source that is wholly unusable.

    Zips are extracted under ``workdir`` (default: the system temp dir); ``ClipSet.cleanup()`` removes them.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source or [])
    cs = ClipSet()
    try:
        for src in sources:
            src = os.fspath(getattr(src, "name", src))  # Gradio file objects carry .name
            if os.path.isdir(src):
                _walk(cs, src)
            elif not os.path.exists(src):
                raise SetError(src, "no such file or folder")
            elif src.lower().endswith(".zip"):
                out = extract_zip(src, max_bytes=max_zip_bytes, max_files=max_zip_files, workdir=workdir)
                cs.temp_dirs.append(out)
                _walk(cs, out, prefix=os.path.basename(src))
            else:
                _add_file(cs, src, os.path.basename(src))
    except BaseException:
        cs.cleanup()
        raise
    return cs


def count_media(source) -> int:
    """Media files a ``load_set(source)`` would collect, counted without extracting anything (zips are
    checked with ``check_zip``; ``SetError`` as ``load_set`` would raise it)."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source or [])
    n = 0
    for src in (os.fspath(getattr(s, "name", s)) for s in sources):
        if os.path.isdir(src):
            names = [os.path.relpath(os.path.join(r, f), src) for r, _, fs in os.walk(src) for f in fs]
        elif not os.path.exists(src):
            raise SetError(src, "no such file or folder")
        elif src.lower().endswith(".zip"):
            names = [i.filename for i in check_zip(src)]
        else:
            names = [os.path.basename(src)]
        n += sum(1 for name in names if not _skipped(name) and os.path.splitext(name)[1].lower() in MEDIA_EXTS)
    return n


def pair_sets(generated: ClipSet, reference: ClipSet | None) -> tuple[list[Pair], list[ErrorRow]]:
    """Pairs by stem (sorted by name), and error rows for names found on one side only.

    With ``reference=None`` every generated entry is a pair without a reference (sync-only scoring).
    """
    if reference is None:
        return [Pair(n, e, None) for n, e in sorted(generated.entries.items())], []
    pairs, errors = [], []
    for name in sorted(set(generated.entries) | set(reference.entries)):
        g, r = generated.entries.get(name), reference.entries.get(name)
        if g and r:
            pairs.append(Pair(name, g, r))
        elif g:
            errors.append(ErrorRow(name, g.display, f"{g.display}: unpaired: no reference file named '{name}.*'"))
        else:
            errors.append(ErrorRow(name, r.display,
                                   f"{r.display}: unpaired: reference has no generated file named '{name}.*'"))
    return pairs, errors
