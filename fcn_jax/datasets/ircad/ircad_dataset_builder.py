"""TFDS builder `ircad`: IRCAD 3D-IRCADb-01 CT slices with liver, bone and kidney masks.

Build it with the `tfds` command (the real data is the default config):

  tfds build fcn_jax/datasets/ircad --manual_dir ~/ircad --data_dir ~/tensorflow_datasets
  tfds build fcn_jax/datasets/ircad --config phantom   # synthetic CT phantom, no network

or from Python after `import fcn_jax.datasets.ircad`:
`tfds.load('ircad', split='patient_17[:50%]', data_dir=...)`.

This module only uses relative imports so that the `tfds` command can import
it as `ircad.ircad_dataset_builder`.
"""

import contextlib
import dataclasses
import sys
import tempfile

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from . import archive, labels, patient
from .errors import DataError

URL = 'https://cloud.ircad.fr/index.php/s/JN3z7EynBiwYyjy/download'
HOMEPAGE = 'https://www.ircad.fr/research/data-sets/liver-segmentation-3d-ircadb-01/'
NUM_PATIENTS = 20


@dataclasses.dataclass
class IrcadConfig(tfds.core.BuilderConfig):
    """`source` is `real` (the IRCAD archive) or `phantom` (synthetic patients written as DICOM).

    The phantom fields (`num_patients`, `num_slices`, `kidney_patients`, `seed`)
    are ignored for the real data. `image_size` is the slice size every example has.
    """

    source: str = 'real'
    image_size: int = 512
    num_patients: int = NUM_PATIENTS
    num_slices: int = 40
    kidney_patients: tuple[int, ...] = ()
    seed: int = 0


REAL = IrcadConfig(
    name='real',
    description='The 20 patients of 3D-IRCADb-01, 512x512 slices, from the official archive.')
PHANTOM = IrcadConfig(
    name='phantom', source='phantom', image_size=256, num_patients=8, num_slices=40,
    kidney_patients=(1, 3, 4, 6, 7, 8),
    description='8 synthetic abdominal CT patients (40 slices of 256x256) written as IRCAD-layout '
                'DICOM and read back through the same reader; kidneys annotated for all but '
                'patients 2 and 5, like the partial annotation of the real data.')


class Builder(tfds.core.GeneratorBasedBuilder):
    """IRCAD 3D-IRCADb-01: one example per CT slice, one split per patient (`patient_<N>`)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First release.'}
    BUILDER_CONFIGS = [REAL, PHANTOM]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    The IRCAD 3D-IRCADb-01 data (licence CC BY-NC-ND) is downloaded from
    {URL}
    when no manual dir is given. To place it by hand, download `3Dircadb1.zip`
    (about 780 MB) from {HOMEPAGE} and put into the manual dir any of:
      (a) the archive itself, `3Dircadb1.zip` (any file name);
      (b) the folder `3Dircadb1/` holding `3Dircadb1.N/PATIENT_DICOM.zip` and `MASKS_DICOM.zip`;
      (c) extracted patient folders `3Dircadb1.N/PATIENT_DICOM/` and `3Dircadb1.N/MASKS_DICOM/`.
    A subset of patients is fine: one split is made per patient found.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        shape = (size, size, 1)
        class_doc = ', '.join(f'{i} {n}' for i, n in enumerate(labels.CLASS_NAMES))
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Tensor(
                    shape=shape, dtype=np.int16, encoding=tfds.features.Encoding.ZLIB,
                    doc='CT slice in Hounsfield units (rescale slope and intercept applied).'),
                'mask': tfds.features.Tensor(
                    shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB,
                    doc=tfds.features.Documentation(
                        desc='Class id of each pixel; overlaps resolved liver > kidney > bone.',
                        value_range=class_doc)),
                'labelled_classes': tfds.features.Tensor(
                    shape=(labels.NUM_CLASSES,), dtype=np.bool_,
                    doc='Which classes are annotated for this patient (background always).'),
                'patient_id': tfds.features.Scalar(np.int32, doc='N of 3Dircadb1.N'),
                'slice_index': tfds.features.Scalar(np.int32, doc='N of the file image_N'),
                'pixel_spacing': tfds.features.Tensor(
                    shape=(2,), dtype=np.float32, doc='Row and column spacing (mm).'),
                'slice_thickness': tfds.features.Scalar(np.float32, doc='mm'),
                'z_position': tfds.features.Scalar(
                    np.float32, doc='Slice position along the slice normal (mm).'),
            }),
            supervised_keys=('image', 'mask'),
            homepage=HOMEPAGE,
            metadata=tfds.core.MetadataDict(class_names=list(labels.CLASS_NAMES)),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        if config.source == 'phantom':
            return {f'patient_{pid}': self._generate_examples(pid)
                    for pid in range(1, config.num_patients + 1)}
        if config.source != 'real':
            raise DataError(f'unknown source {config.source!r}: use "real" or "phantom"')
        root, downloaded = self._locate(dl_manager)
        with contextlib.ExitStack() as stack:
            found = [p.patient_id for p in archive.find_patients(root, stack)]
        if not found:
            raise DataError(f'{root}: no IRCAD patient folders (3Dircadb1.N) found.\n'
                            + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        missing = sorted(set(range(1, NUM_PATIENTS + 1)) - set(found))
        if downloaded and missing:
            raise DataError(f'{root}: the downloaded archive lacks patients {missing}; '
                            'delete it and download again')
        return {f'patient_{pid}': self._generate_examples(pid, root, downloaded) for pid in found}

    def _locate(self, dl_manager) -> tuple[epath.Path, bool]:
        """The manual dir when given, else the downloaded archive."""
        try:
            return epath.Path(dl_manager.manual_dir), False
        except AssertionError:  # No manual dir, or an empty one.
            given = getattr(dl_manager, '_manual_dir', None)
            if given is not None and epath.Path(given) != epath.Path(dl_manager.download_dir) / 'manual':
                raise DataError(f'manual dir {given} does not exist or is empty') from None
        return epath.Path(dl_manager.download(URL)), True

    def _generate_examples(self, pid: int, root: epath.Path | None = None, downloaded: bool = False):
        """Examples of one patient, keyed `<patient>_<slice>`, in z order."""
        if self.builder_config.source == 'phantom':
            yield from self._phantom_examples(pid)
        else:
            yield from self._real_examples(root, pid, downloaded)

    def _real_examples(self, root: epath.Path, pid: int, downloaded: bool):
        with contextlib.ExitStack() as stack:
            source = {p.patient_id: p for p in archive.find_patients(root, stack)}[pid]
            indices = []
            for key, example in patient.read_patient(source, image_size=self.builder_config.image_size):
                indices.append(example['slice_index'])
                yield key, example
            # The archive's checksum changes per download: verify the slices instead.
            if downloaded and sorted(indices) != list(range(len(indices))):
                raise DataError(f'{source.label}: slices are not image_0..image_{len(indices) - 1}; '
                                'the download is damaged, delete it and download again')

    def _phantom_examples(self, pid: int):
        from . import phantom  # pylint: disable=g-import-not-at-top  (only the phantom config needs it)

        config = self.builder_config
        with tempfile.TemporaryDirectory(prefix='ircad-phantom-') as tmp, \
                contextlib.ExitStack() as stack:
            folder = phantom.write_patient(
                tmp, pid, num_slices=config.num_slices, size=config.image_size, seed=config.seed,
                kidneys=pid in config.kidney_patients, inner_zips=True)
            (source,) = archive.find_patients(folder, stack)
            yield from patient.read_patient(source, image_size=config.image_size)


def _report_data_errors(previous=sys.excepthook):
    """Makes an uncaught DataError print one line (`tfds build` shows no traceback for it)."""

    def hook(kind, value, traceback):
        if isinstance(value, DataError):
            print(f'ERROR: {value}', file=sys.stderr)
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


_report_data_errors()
