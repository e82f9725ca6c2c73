"""The `ircad` TFDS builder on its dummy data (manual-dir forms a, b, c) and on the phantom."""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

import fcn_jax.datasets.ircad  # noqa: F401  (registers `ircad`)
from fcn_jax.datasets.ircad import ircad_dataset_builder as idb

DUMMY_DATA = pathlib.Path(idb.__file__).parent / 'dummy_data'

# dummy_data holds the same two phantom patients (3 slices of 64x64; kidneys annotated for
# patient 1 only) in each form of the manual dir. Made by `python -m fcn_jax.datasets.ircad.phantom`.
REAL_64 = idb.IrcadConfig(name='real_64', image_size=64, description='The real layout, 64x64 slices.')


class _ManualDir:
    DATASET_CLASS = idb.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [REAL_64]
    SPLITS = {'patient_1': 3, 'patient_2': 3}
    SKIP_CHECKSUMS = True


class ArchiveZipTest(_ManualDir, tfds.testing.DatasetBuilderTestCase):
    """(a) the official archive `3Dircadb1.zip`."""
    EXAMPLE_DIR = DUMMY_DATA / 'zip'


class InnerZipsTest(_ManualDir, tfds.testing.DatasetBuilderTestCase):
    """(b) the folder `3Dircadb1/` with per-patient inner zips."""
    EXAMPLE_DIR = DUMMY_DATA / 'inner_zips'


class ExtractedTest(_ManualDir, tfds.testing.DatasetBuilderTestCase):
    """(c) fully extracted patient folders."""
    EXAMPLE_DIR = DUMMY_DATA / 'extracted'


class PhantomTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = idb.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [idb.IrcadConfig(
        name='phantom_tiny', source='phantom', image_size=64, num_patients=2, num_slices=4,
        kidney_patients=(1,), description='Two tiny phantom patients.')]
    SPLITS = {'patient_1': 4, 'patient_2': 4}
    EXAMPLE_DIR = DUMMY_DATA / 'zip'  # unused by the phantom, which needs no files


def test_registered_and_sliceable(tmp_path):
    config = idb.IrcadConfig(name='phantom_small', source='phantom', image_size=32,
                             num_patients=2, num_slices=6, kidney_patients=(2,))
    builder = tfds.builder('ircad', config=config, data_dir=tmp_path)
    builder.download_and_prepare()
    assert builder.info.metadata['class_names'] == ['background', 'liver', 'bone', 'kidney']
    assert set(builder.info.splits) == {'patient_1', 'patient_2'}
    half = list(tfds.as_numpy(builder.as_dataset(split='patient_1[:50%]')))
    both = list(tfds.as_numpy(builder.as_dataset(split='patient_1+patient_2')))
    assert [ex['slice_index'] for ex in half] == [0, 1, 2]
    assert len(both) == 12
    assert {ex['patient_id'] for ex in both} == {1, 2}
    assert [ex['labelled_classes'][3] for ex in both] == [False] * 6 + [True] * 6
    ex = both[0]
    assert ex['image'].dtype == np.int16 and ex['image'].shape == (32, 32, 1)
    assert ex['mask'].dtype == np.uint8 and ex['mask'].max() <= 3


def test_standard_configs():
    assert idb.Builder.BUILDER_CONFIGS[0].name == 'real'  # the default
    assert idb.REAL.image_size == 512
    assert idb.PHANTOM.name == 'phantom' and idb.PHANTOM.source == 'phantom'
