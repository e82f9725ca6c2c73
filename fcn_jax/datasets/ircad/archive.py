"""Finding IRCAD patients in a download or a manual dir, in any of the archive's forms.

Forms accepted (mixed freely; a patient found twice is an error):
  (a) the official archive `3Dircadb1.zip` (any file name: zip files are recognised by content);
  (b) the folder `3Dircadb1/` holding `3Dircadb1.N/PATIENT_DICOM.zip` and `MASKS_DICOM.zip`;
  (c) fully extracted patient folders `3Dircadb1.N/PATIENT_DICOM/image_*`,
      `3Dircadb1.N/MASKS_DICOM/<organ>/image_*`.
Inner zips are read in place (from disk, or from memory when they sit inside the
outer zip), never extracted to disk. Memory is bounded by one patient's inner zips.
"""

import contextlib
import dataclasses
import io
import os
import pathlib
import re
import zipfile
from typing import Callable, Iterator

from .errors import DataError

_PATIENT_IN_PATH = re.compile(r'(?:^|/)(3Dircadb1\.(\d+))/')
CT_FOLDER, MASKS_FOLDER = 'PATIENT_DICOM', 'MASKS_DICOM'
_INNER_ZIPS = {f'{CT_FOLDER}.zip', f'{MASKS_FOLDER}.zip', 'LABELLED_DICOM.zip', 'MESHES_VTK.zip'}


def _is_junk(path: str) -> bool:
    parts = path.split('/')
    return any(p.startswith('.') or p == '__MACOSX' for p in parts) or path.endswith('/')


class Tree:
    """Read-only view of files under a folder or inside a zip: relative posix path -> bytes."""

    def __init__(self, label: str, files: dict[str, Callable[[], bytes]]):
        self.label = label
        self.files = files

    def read(self, path: str) -> bytes:
        try:
            return self.files[path]()
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f'{self.label}/{path}: cannot read ({e})') from None

    def sub(self, prefix: str) -> 'Tree':
        """The files under `prefix/`, with paths relative to it."""
        n = len(prefix) + 1
        return Tree(f'{self.label}/{prefix}',
                    {p[n:]: f for p, f in self.files.items() if p.startswith(prefix + '/')})

    @classmethod
    def from_dir(cls, root: pathlib.Path) -> 'Tree':
        """Files under `root`, their paths starting with `root`'s own name.

        Keeping the folder's name lets `root` itself be a `3Dircadb1.N` patient folder.
        """
        files = {}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for f in filenames:
                full = pathlib.Path(dirpath, f)
                rel = full.relative_to(root.parent).as_posix()
                if not _is_junk(full.relative_to(root).as_posix()):
                    files[rel] = full.read_bytes
        return cls(str(root.parent), files)

    @classmethod
    def from_zip(cls, zf: zipfile.ZipFile, label: str) -> 'Tree':
        files = {}
        for info in zf.infolist():
            if not info.is_dir() and not _is_junk(info.filename):
                files[info.filename] = (lambda n=info.filename: zf.read(n))
        return cls(label, files)


def open_zip(source, label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f'{label}: not a readable zip file ({e})') from None


@dataclasses.dataclass
class PatientSource:
    """Where one patient's CT and masks are: a patient folder inside a tree."""

    patient_id: int
    tree: Tree
    prefix: str  # path of the `3Dircadb1.N` folder inside the tree ('' for the tree root)

    @property
    def label(self) -> str:
        return f'{self.tree.label}/{self.prefix}'.rstrip('/')

    def _part(self, stack: contextlib.ExitStack, folder: str, required: bool) -> Tree | None:
        base = f'{self.prefix}/{folder}' if self.prefix else folder
        extracted = self.tree.sub(base)
        if extracted.files:
            return extracted
        if f'{base}.zip' in self.tree.files:
            data = self.tree.read(f'{base}.zip')  # bytes of the inner zip, kept in memory
            zf = stack.enter_context(open_zip(io.BytesIO(data), f'{self.tree.label}/{base}.zip'))
            inner = Tree.from_zip(zf, f'{self.tree.label}/{base}.zip')
            # Members are `PATIENT_DICOM/image_0` in the official zips; accept them without the folder too.
            nested = inner.sub(folder)
            return nested if nested.files else inner
        if required:
            what = 'no CT slices' if folder == CT_FOLDER else 'no masks'
            raise DataError(f'{self.label}: {what}: {folder}/ is missing or empty and there is '
                            f'no {folder}.zip')
        return None

    @contextlib.contextmanager
    def open(self, *, masks_required: bool = True) -> Iterator[tuple[Tree, Tree | None]]:
        """Yields (CT tree, masks tree) with paths `image_N` and `<organ>/image_N`."""
        with contextlib.ExitStack() as stack:
            ct = self._part(stack, CT_FOLDER, required=True)
            masks = self._part(stack, MASKS_FOLDER, required=masks_required)
            yield ct, masks


def _patients_in_tree(tree: Tree) -> dict[int, list[str]]:
    """Patient id -> prefixes of the `3Dircadb1.N` folders holding any file."""
    found: dict[int, list[str]] = {}
    for path in tree.files:
        match = _PATIENT_IN_PATH.search(path)
        if match:
            prefix = path[:match.end(1)]
            prefixes = found.setdefault(int(match.group(2)), [])
            if prefix not in prefixes:
                prefixes.append(prefix)
    return found


def find_patients(root: os.PathLike | str, stack: contextlib.ExitStack) -> list[PatientSource]:
    """Every patient found under `root` (a folder, or an archive file), sorted by id.

    Zip files that are not per-patient inner zips are opened as archives (form a);
    they stay open until `stack` closes.
    """
    root = pathlib.Path(root)
    if not root.exists():
        raise DataError(f'{root}: does not exist')
    if root.is_file():
        trees = [Tree.from_zip(stack.enter_context(open_zip(root, str(root))), str(root))]
    else:
        disk = Tree.from_dir(root)
        trees = [disk]
        for path in disk.files:
            name = path.rpartition('/')[2]
            full = root.parent / path
            if name not in _INNER_ZIPS and zipfile.is_zipfile(full):
                zf = stack.enter_context(open_zip(full, str(full)))
                trees.append(Tree.from_zip(zf, str(full)))
    patients: dict[int, PatientSource] = {}
    for tree in trees:
        for pid, prefixes in _patients_in_tree(tree).items():
            source = PatientSource(pid, tree, prefixes[0])
            if len(prefixes) > 1:
                raise DataError(f'patient {pid} found twice: {tree.label}/{prefixes[0]} and '
                                f'{tree.label}/{prefixes[1]}; keep one copy')
            if pid in patients:
                raise DataError(f'patient {pid} found twice: {patients[pid].label} and {source.label}; '
                                'keep one copy')
            patients[pid] = source
    return [patients[k] for k in sorted(patients)]
