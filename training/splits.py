"""Deterministic train / val / test splits by image (never by tile).

Positives and negatives are split separately so each split gets its share of both; the test
split always keeps images without a satellite (at least one when the dataset has any), as
the report's test set did. With negatives='test', every negative goes to test (the report's
own arrangement: its train and val sets held positives only).
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Dict, List, Sequence

import numpy as np

from sat_seg_training import dataset as ds

SPLITS = ('train', 'val', 'test')
NEGATIVE_POLICIES = ('spread', 'test')


def _counts(n: int, fractions: Sequence[float]) -> List[int]:
    """Largest-remainder rounding of n * fractions (sums to n)."""
    raw = np.asarray(fractions, float) * n
    counts = np.floor(raw).astype(int)
    for index in np.argsort(-(raw - counts), kind='stable')[:n - counts.sum()]:
        counts[index] += 1
    return [int(c) for c in counts]


def parse_fractions(text: str) -> List[float]:
    """Parse 'train,val,test' fractions such as '0.8,0.1,0.1' (must sum to 1)."""
    try:
        fractions = [float(v) for v in text.split(',')]
    except ValueError:
        fractions = []
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f'fractions {text!r}: give three non-negative numbers train,val,test '
                         'that sum to 1, e.g. 0.8,0.1,0.1')
    return fractions


def assign_splits(dataset: ds.Dataset, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0, negatives: str = 'spread') -> Dict[str, str]:
    """Return {file_name: split}; deterministic in (file names, fractions, seed, policy)."""
    if negatives not in NEGATIVE_POLICIES:
        raise ValueError(f'negatives={negatives!r}: use one of {", ".join(NEGATIVE_POLICIES)}')
    assignment: Dict[str, str] = {}
    groups = {'positive': sorted(r.file_name for r in dataset if r.positive),
              'negative': sorted(r.file_name for r in dataset if not r.positive)}
    for group, names in groups.items():
        rng = np.random.default_rng([seed, group == 'negative'])
        names = [names[i] for i in rng.permutation(len(names))]
        if group == 'negative' and negatives == 'test':
            counts = [0, 0, len(names)]
        else:
            counts = _counts(len(names), fractions)
            if group == 'negative' and names and counts[2] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[2] += 1
        start = 0
        for split, count in zip(SPLITS, counts):
            for name in names[start:start + count]:
                assignment[name] = split
            start += count
    return assignment


def _link_or_copy(source: pathlib.Path, target: pathlib.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def write_splits(dataset: ds.Dataset, out, assignment: Dict[str, str], info: dict) -> dict:
    """Write OUT/splits.json and OUT/<split>/ dataset folders (images hard-linked).

    Returns the splits.json content.
    """
    out = pathlib.Path(out)
    summary = dict(info)
    summary['counts'] = {}
    summary['splits'] = {}
    for split in SPLITS:
        records = [r for r in dataset if assignment[r.file_name] == split]
        summary['splits'][split] = [r.file_name for r in records]
        summary['counts'][split] = {'images': len(records),
                                    'positives': sum(r.positive for r in records),
                                    'negatives': sum(not r.positive for r in records)}
        with ds.DatasetWriter(out / split, info=dict(info, split=split)) as writer:
            for r in records:
                _link_or_copy(r.image_path, out / split / ds.IMAGES / r.file_name)
                if r.mask_path is not None:
                    _link_or_copy(r.mask_path, out / split / ds.MASKS / ds.mask_name(r.file_name))
                writer.add_existing(r)
    ds.write_json(out / 'splits.json', summary)
    return summary


def load_assignment(path) -> Dict[str, str]:
    """Read {file_name: split} from a splits.json written by write_splits."""
    payload = ds.read_json(path, 'splits.json from `sat-seg split`')
    try:
        return {name: split for split, names in payload['splits'].items() for name in names}
    except (KeyError, AttributeError, TypeError):
        raise ValueError(f'{path} has no "splits" mapping; write it with `sat-seg split`'
                         ) from None
