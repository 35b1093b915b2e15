"""Datasets as lists of image files: ImageFolder trees and CSV/JSON lists, checked, hashed and split without decoding a pixel."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.data.preprocess import IMAGE_SUFFIXES
from edgekd.errors import EdgeKDError

SPLIT_NAMES = ("train", "val", "test")
SHOW_BAD = 5  # bad files named in a message or the report; the rest are counted


class PathList:
    """Relative paths packed in one UTF-8 blob with offsets: a million names pickle to a worker as two objects."""

    def __init__(self, names: list[str] | None = None, *, blob: bytes = b"", offsets: np.ndarray | None = None):
        if names is not None:
            encoded = [n.encode("utf-8") for n in names]
            self.blob = b"".join(encoded)
            self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
            np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        else:
            self.blob, self.offsets = blob, offsets if offsets is not None else np.zeros(1, np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, idx) -> "PathList":
        return PathList([self[int(i)] for i in idx])


@dataclass
class FileSet:
    """One split of a file dataset: image paths (relative to ``root``) and labels; pixels read on demand."""

    root: str
    paths: PathList
    y: np.ndarray            # int64 class indices
    sizes: np.ndarray        # bytes, from the listing (part of the hash)
    mtimes: np.ndarray       # ns since the epoch (part of the hash)
    name: str

    def __len__(self) -> int:
        return len(self.y)

    def path(self, i: int) -> str:
        rel = self.paths[i]
        return rel if os.path.isabs(rel) else os.path.join(self.root, rel)

    def subset(self, idx: np.ndarray, name: str) -> "FileSet":
        idx = np.asarray(idx, dtype=np.int64)
        return FileSet(self.root, self.paths.take(idx), self.y[idx], self.sizes[idx], self.mtimes[idx], name)

    def sha256(self) -> str:
        """Hash of the list (relative path, label, size, mtime per file), never of the pixels."""
        h = hashlib.sha256(f"files|{len(self)}\n".encode())
        for i in range(len(self)):
            h.update(f"{self.paths[i]}\t{int(self.y[i])}\t{int(self.sizes[i])}\t{int(self.mtimes[i])}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "size": int(len(self)), "sha256": self.sha256(), "hash_of": "file list"}

    def file_list(self) -> list[dict]:
        return [{"path": self.paths[i], "label": int(self.y[i])} for i in range(len(self))]


@dataclass
class RawFiles:
    """What a file-list loader returns before splitting: the given splits, class names, and warnings."""

    train: FileSet
    val: FileSet | None
    test: FileSet | None
    classes: list[str]
    notes: list[str] = field(default_factory=list)   # one line each, printed before training
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why) left out at listing
    deduped: dict = field(default_factory=dict)      # duplicates dropped by settle_duplicates (report: data.deduped)

    def splits(self) -> dict[str, FileSet]:
        return {n: s for n, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None}


def _stat_files(root: Path, rel: list[str], labels: list[int], name: str, unreadable: list) -> FileSet:
    keep, sizes, mtimes = [], [], []
    for i, r in enumerate(rel):
        full = r if os.path.isabs(r) else os.path.join(root, r)
        try:
            st = os.stat(full)
            if not os.access(full, os.R_OK):
                unreadable.append((r, "permission denied"))
                continue
        except OSError as err:
            unreadable.append((r, err.strerror or type(err).__name__))
            continue
        if st.st_size == 0:
            unreadable.append((r, "empty file"))
            continue
        keep.append(i)
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
    return FileSet(str(root), PathList([rel[i] for i in keep]), np.asarray([labels[i] for i in keep], np.int64),
                   np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64), name)


# ---------------------------------------------------------------------------------------------
# ImageFolder: root/train/<class>/... (+ val/, test/), or root/<class>/... alone


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and not name.startswith(".")


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _walk_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, as torchvision's ImageFolder), sorted, relative to it.

    Symlinks are followed, but each real folder is listed once: a link back up the tree (``cls/up -> ..``)
    would otherwise be walked until the path is too long. What a link into another class or split brings in
    is then found by :func:`settle_duplicates`.
    """
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = os.path.relpath(dirpath, folder)
        found += [os.path.normpath(os.path.join(base, f)) for f in filenames if _is_image(f)]
    return sorted(found)


def has_class_folders(root: Path, probe: int = 8) -> bool:
    """Does ``root`` hold <class>/<image> folders (checked on the first few class folders)?"""
    try:
        dirs = _class_dirs(root)[:probe]
    except OSError:
        return False
    for d in dirs:
        try:
            if any(_is_image(e.name) for e in os.scandir(d) if e.is_file()):
                return True
        except OSError:
            continue
    return False


def scan_imagefolder(root: Path) -> RawFiles:
    """List an ImageFolder tree; refuse what cannot train, note what is odd (one line each)."""
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = [d.name for d in _class_dirs(train_dir) if d.name not in (SPLIT_NAMES if train_dir == root else ())]
    if len(classes) < 2:
        raise EdgeKDError(f"{train_dir} has {len(classes)} class folder(s)",
                          "an image folder needs <class>/ sub-folders for at least two classes")
    notes: list[str] = []
    unreadable: list[tuple[str, str]] = []
    splits: dict[str, FileSet] = {}
    for split in SPLIT_NAMES:
        split_dir = train_dir if split == "train" else root / split
        if split != "train" and (train_dir == root or not split_dir.is_dir()):
            continue
        index = {c: i for i, c in enumerate(classes)}
        rel, labels, empty = [], [], []
        for d in _class_dirs(split_dir):
            if d.name not in index:
                raise EdgeKDError(f"{split_dir} has class folder {d.name!r} that {train_dir.name}/ does not have",
                                  f"use the same class folders as {train_dir.name}/ ({', '.join(classes[:10])})")
            names = _walk_images(d)
            if not names:
                empty.append(d.name)
            base = os.path.relpath(d, root)
            rel += [os.path.join(base, n) for n in names]
            labels += [index[d.name]] * len(names)
        if not rel:
            raise EdgeKDError(f"{split_dir} holds no images",
                              f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {split_dir}/<class>/")
        if empty:
            what = "no training images: the student never sees them" if split == "train" else "no images in this split"
            notes.append(f"{split_dir.name}/: class folder(s) {', '.join(empty[:SHOW_BAD])}"
                         f"{' ...' if len(empty) > SHOW_BAD else ''} hold {what}")
        splits[split] = _stat_files(root, rel, labels, split, unreadable)
    return RawFiles(splits["train"], splits.get("val"), splits.get("test"), classes, notes, unreadable)


# ---------------------------------------------------------------------------------------------
# CSV / JSON lists: path,label[,split] with paths relative to the list file


def _rows_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    return [[c.strip() for c in r] for r in rows]


def _rows_json(path: Path) -> list[list[str]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise EdgeKDError(f"{path} is not valid JSON ({str(err)[:80]})", "write a list of {\"path\": ..., \"label\": ...}") from None
    if isinstance(doc, dict) and set(doc) <= set(SPLIT_NAMES):
        return [r + [split] for split, items in doc.items() for r in _json_items(items, path)]
    return _json_items(doc, path)


def _json_items(items, path: Path) -> list[list[str]]:
    if not isinstance(items, list):
        raise EdgeKDError(f"{path}: expected a list of entries", "write [{\"path\": \"a.jpg\", \"label\": \"cat\"}, ...]")
    rows = []
    for item in items:
        if isinstance(item, dict) and "path" in item and "label" in item:
            rows.append([str(item["path"]), str(item["label"])] + ([str(item["split"])] if "split" in item else []))
        elif isinstance(item, (list, tuple)) and len(item) in (2, 3):
            rows.append([str(v) for v in item])
        else:
            raise EdgeKDError(f"{path}: entry {str(item)[:60]} is not a path and a label",
                              "write [{\"path\": \"a.jpg\", \"label\": \"cat\"}, ...] or [[\"a.jpg\", \"cat\"], ...]")
    return rows


def read_file_list(path: Path) -> RawFiles:
    """A CSV (``path,label[,split]``) or JSON list of images; relative paths are relative to the list file."""
    rows = _rows_json(path) if path.suffix.lower() == ".json" else _rows_csv(path)
    if not rows:
        raise EdgeKDError(f"{path} lists no images", "write one `path,label` line per image")
    for r in rows:
        if len(r) < 2 or not r[0] or not r[1]:
            raise EdgeKDError(f"{path}: line {','.join(r)[:80]!r} is not `path,label`", "write one `path,label` line per image")
        if len(r) > 2 and r[2] and r[2] not in SPLIT_NAMES:
            raise EdgeKDError(f"{path}: unknown split {r[2]!r} in line {','.join(r)[:80]!r}", "use train, val or test")
    names = [r[1] for r in rows]
    if all(n.lstrip("-").isdigit() for n in names):
        ints = [int(n) for n in names]
        if min(ints) < 0:
            raise EdgeKDError(f"{path}: labels contain negative values", "labels must be class indices 0..K-1 or class names")
        classes = [str(i) for i in range(max(ints) + 1)]
    else:
        classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    root = path.parent
    unreadable: list[tuple[str, str]] = []
    splits = {}
    for split in SPLIT_NAMES:
        picked = [r for r in rows if (r[2] if len(r) > 2 and r[2] else "train") == split]
        if picked:
            splits[split] = _stat_files(root, [r[0] for r in picked], [index[r[1]] for r in picked], split, unreadable)
    if "train" not in splits or not len(splits["train"]):
        raise EdgeKDError(f"{path} lists no readable training images", "mark at least some lines as train (or leave the split column out)")
    seen = set(splits["train"].y.tolist())
    for split in ("val", "test"):
        if split in splits:
            extra = sorted(set(splits[split].y.tolist()) - seen)
            if extra:
                raise EdgeKDError(f"{path}: class {classes[extra[0]]!r} appears in {split} but not in train",
                                  "every class needs training images")
    notes = []
    missing = [c for i, c in enumerate(classes) if i not in seen]
    if missing:
        notes.append(f"{path.name}: class(es) {', '.join(missing[:SHOW_BAD])} have no training images: the student never sees them")
    return RawFiles(splits["train"], splits.get("val"), splits.get("test"), classes, notes, unreadable)


# ---------------------------------------------------------------------------------------------
# The same image listed twice: by a symlink, a hard link, a copy, or a list naming it twice

_HEAD = 1 << 16  # bytes read from each end of a large file before its whole content is hashed


def _digest(path: str, size: int, whole: bool) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if whole or size <= 2 * _HEAD:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(_HEAD))
            fh.seek(-_HEAD, os.SEEK_END)
            h.update(fh.read(_HEAD))
    return h.hexdigest()


def _grouped(keys: list, digest) -> list[list]:
    out: dict[str, list] = {}
    for key in keys:
        try:
            out.setdefault(digest(key), []).append(key)
        except OSError:  # unreadable now: counted when it is decoded
            continue
    return [g for g in out.values() if len(g) > 1]


def _same_content(paths: dict, sizes: dict) -> list[list]:
    """Groups of file identities whose bytes are the same. Only files of equal size are read, a large one
    first at both ends, and wholly only where those agree."""
    by_size: dict[int, list] = {}
    for key, size in sizes.items():
        by_size.setdefault(size, []).append(key)
    groups = []
    for size, keys in by_size.items():
        if len(keys) < 2:
            continue
        found = _grouped(keys, lambda k: _digest(paths[k], size, False))
        if size > 2 * _HEAD:
            found = [g for ks in found for g in _grouped(ks, lambda k: _digest(paths[k], size, True))]
        groups += found
    return groups


def find_duplicates(raw: RawFiles) -> list[list[tuple[str, int]]]:
    """Groups of (split, index) entries that are one image: the same file (through links) or the same bytes."""
    by_file: dict[tuple[int, int], list[tuple[str, int]]] = {}
    paths, sizes = {}, {}
    for split, files in raw.splits().items():
        for i in range(len(files)):
            try:
                st = os.stat(files.path(i))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            by_file.setdefault(key, []).append((split, i))
            paths.setdefault(key, files.path(i))
            sizes.setdefault(key, st.st_size)
    content = _same_content(paths, sizes)
    in_content = {key for keys in content for key in keys}
    groups = [entries for key, entries in by_file.items() if len(entries) > 1 and key not in in_content]
    return groups + [[e for key in keys for e in by_file[key]] for keys in content]


def settle_duplicates(raw: RawFiles, *, dedupe: bool, where: str) -> RawFiles:
    """``raw`` with each image listed once. One image twice in one split under one label keeps one entry.
    One image in two splits or under two labels is refused, naming it; with ``dedupe`` it is kept once
    (see :func:`_keeper`) or, when its labels disagree, dropped wholly.
    What was dropped is counted in ``deduped`` (the report's ``data.deduped``)."""
    groups = sorted(find_duplicates(raw), key=lambda g: min((SPLIT_NAMES.index(s), i) for s, i in g))
    if not groups:
        return raw
    splits = raw.splits()
    counts = {"duplicate": 0, "split_conflict": 0, "label_conflict": 0}
    drop: dict[str, set[int]] = {s: set() for s in splits}
    examples = []
    kinds = [_kind(group, splits) for group in groups]
    conflicts = [g for g, kind in zip(groups, kinds) if kind != "duplicate"]
    if conflicts and not dedupe:
        first = conflicts[0]
        raise EdgeKDError(f"{where}: one image is listed as "
                          + " and as ".join(_place(raw, splits, s, i) for s, i in first[:3])
                          + (f" (and {len(first) - 3} more)" if len(first) > 3 else "")
                          + f"; {len(conflicts)} image(s) are in two splits or under two labels",
                          "remove the links or copies that put them there, or pass --dedupe to drop them "
                          "(counted in the report)")
    for group, kind in zip(groups, kinds):
        keep = _keeper(group, splits)
        for s, i in group:
            if (s, i) != keep:
                drop[s].add(i)
                counts[kind] += 1
        if len(examples) < SHOW_BAD:
            examples.append({"kind": kind, "files": [splits[s].paths[i] for s, i in group[:4]]})
    kept = {s: files.subset(np.setdiff1d(np.arange(len(files)), sorted(drop[s])), s) for s, files in splits.items()}
    dropped = sum(counts.values())
    notes = raw.notes + [f"{dropped} duplicate image entr{'y' if dropped == 1 else 'ies'} dropped ("
                         + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n) + ")"]
    if not len(kept["train"]):
        raise EdgeKDError(f"{where}: no training image is left once duplicates are dropped",
                          "remove the links or copies that list the same images twice")
    return RawFiles(kept["train"], kept.get("val"), kept.get("test"), raw.classes, notes, raw.unreadable,
                    {**counts, "dropped": dropped, "examples": examples})


def _keeper(group: list[tuple[str, int]], splits: dict) -> tuple[str, int] | None:
    """The entry of a group that stays: of the entries reached without a symlink (all, if none is), the one
    in the most held-out split (test, then val), so no test image is trained on; none if their labels differ."""
    def direct(entry):
        files = splits[entry[0]]
        rel = files.paths[entry[1]]
        return os.path.realpath(files.path(entry[1])) == os.path.normpath(os.path.join(os.path.realpath(files.root), rel))

    pool = [e for e in group if direct(e)] or group
    if len({int(splits[s].y[i]) for s, i in pool}) > 1:
        return None
    return max(pool, key=lambda e: (SPLIT_NAMES.index(e[0]), -e[1]))


def _kind(group: list[tuple[str, int]], splits: dict) -> str:
    places = {(s, int(splits[s].y[i])) for s, i in group}
    if len(places) == 1:
        return "duplicate"
    return "label_conflict" if len({label for _, label in places}) > 1 else "split_conflict"


def _place(raw: RawFiles, splits: dict, split: str, i: int) -> str:
    return f"{splits[split].paths[i]} ({split}, label {raw.classes[int(splits[split].y[i])]!r})"


# ---------------------------------------------------------------------------------------------
# Splits of file lists (never of pixels): stratified by class, seeded


def stratified_pick(y: np.ndarray, fraction: float, rng: np.random.Generator, at_least: int = 1) -> np.ndarray:
    """Indices of about ``fraction`` of each class (at least ``at_least`` in total), in index order."""
    picked = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = int(round(len(members) * fraction))
        if k:
            picked.append(rng.permutation(members)[:k])
    out = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    while len(out) < at_least:  # from the largest class, so no class loses its only image
        rest = np.setdiff1d(np.arange(len(y)), out)
        if not len(rest):
            break
        values, counts = np.unique(y[rest], return_counts=True)
        members = rest[y[rest] == values[np.argmax(counts)]]
        out = np.sort(np.append(out, rng.permutation(members)[0]))
    return out


def stratified_take(y: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices spread over the classes in proportion (largest remainders), in index order."""
    count = min(count, len(y))
    classes, sizes = np.unique(y, return_counts=True)
    share = sizes * count / len(y)
    k = np.floor(share).astype(int)
    for i in np.argsort(-(share - k), kind="stable")[:count - int(k.sum())]:
        k[i] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:n] for c, n in zip(classes, k) if n]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def bad_files_line(split: str, bad: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{p} ({why})" for p, why in bad[:SHOW_BAD])
    return f"{split}: {len(bad)} file(s) left out: {shown}{' ...' if len(bad) > SHOW_BAD else ''}"
