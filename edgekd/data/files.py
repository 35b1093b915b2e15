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
    """Image files under ``folder`` (recursively, as torchvision's ImageFolder), sorted, relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
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
