"""Paired comparison of two models on the same images, from their ``sat-seg evaluate`` reports.

Two accuracies on the same 300 scenes differ by chance by a few points (a standard error of
2.6-2.9 points at these accuracies), but most scenes are right or wrong for both models, so
the scenes they disagree on carry the evidence: ``gain`` scenes right only with the candidate,
``loss`` scenes right only with the reference. Under "neither model is better" each disagreement
is a fair coin, so the difference is judged by McNemar's test: the exact two-sided binomial
p-value of ``gain`` against ``gain + loss`` draws, and its normal approximation
``z = (gain - loss) / sqrt(gain + loss)``. Counts add up over several datasets (e.g. the test,
validation and new scenes, each scored by both models), which is how docs/training.md decides
whether a candidate replaces the bundled model (gray z of at least 2).
"""

from __future__ import annotations

from fractions import Fraction
import math
from typing import Any, Dict, List, Optional, Sequence


def mcnemar_p(gain: int, loss: int) -> float:
    """Exact two-sided McNemar p-value: P(a count as far from (gain + loss) / 2) under p 0.5."""
    if gain < 0 or loss < 0:
        raise ValueError('counts must be >= 0, not %r and %r' % (gain, loss))
    n = gain + loss
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gain, loss) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def z_score(gain: int, loss: int) -> float:
    """(gain - loss) / sqrt(gain + loss): the sign test's normal approximation (0 without any)."""
    n = gain + loss
    return 0.0 if n == 0 else (gain - loss) / math.sqrt(n)


def _row(report: Dict[str, Any], size: int, name: str) -> Dict[str, Any]:
    rows = [row for row in report.get('rows') or [] if isinstance(row, dict)]
    for row in rows:
        if row.get('model_size') == size:
            return row
    sizes = sorted(row['model_size'] for row in rows if isinstance(row.get('model_size'), int))
    raise ValueError('%s has no row for model size %d (it has %s): evaluate both at the same '
                     '--sizes' % (name, size, sizes or 'none'))


def _images(report: Dict[str, Any], name: str) -> List[str]:
    images = report.get('images')
    if not isinstance(images, list):
        raise ValueError('%s does not list the images it scored (written by an older sat-seg '
                         'evaluate): run sat-seg evaluate --json again' % name)
    return [str(image) for image in images]


def _wrong(report: Dict[str, Any], size: int, name: str) -> set:
    failures = report.get('failures', {})
    entries = failures.get(str(size), failures.get(size))
    if entries is None:
        raise ValueError('%s has no failure list for model size %d' % (name, size))
    try:
        return {str(entry['file_name']) for entry in entries}
    except (KeyError, TypeError):
        raise ValueError('%s: its failures at %d are not sat-seg evaluate entries (each needs a '
                         'file_name)' % (name, size)) from None


def paired(candidate: Dict[str, Any], reference: Dict[str, Any], size: int = 512,
           names: Sequence[str] = ('candidate', 'reference')) -> Dict[str, Any]:
    """Return the paired counts of two ``sat-seg evaluate`` reports on the same images.

    Both reports must list the same images (``images``, in any order) and hold a row for
    ``size``. Returns images, the two accuracies, gain (right only with the candidate), loss
    (right only with the reference), both (right with both), z and McNemar's exact p.
    """
    images = _images(candidate, names[0])
    other = _images(reference, names[1])
    if sorted(images) != sorted(other):
        only = sorted(set(images) ^ set(other))
        raise ValueError('%s and %s scored different images (%d and %d; e.g. %s is in one '
                         'only): compare reports of the same dataset'
                         % (names[0], names[1], len(images), len(other),
                            only[0] if only else 'a repeated name'))
    for report, name in zip((candidate, reference), names):
        counted = _row(report, size, name).get('images')
        if counted != len(images):
            raise ValueError('%s: its row at %d counts %s images but it lists %d'
                             % (name, size, counted, len(images)))
    everything = set(images)
    wrong_candidate = _wrong(candidate, size, names[0])
    wrong_reference = _wrong(reference, size, names[1])
    for wrong, name in ((wrong_candidate, names[0]), (wrong_reference, names[1])):
        if not wrong <= everything:
            raise ValueError('%s lists a failure on an image it did not score (%s)'
                             % (name, sorted(wrong - everything)[0]))
    gain = len(wrong_reference - wrong_candidate)
    loss = len(wrong_candidate - wrong_reference)
    count = len(everything)
    return {'dataset': candidate.get('dataset'), 'images': count, 'model_size': size,
            'candidate': candidate.get('model'), 'reference': reference.get('model'),
            'candidate_accuracy': (count - len(wrong_candidate)) / count,
            'reference_accuracy': (count - len(wrong_reference)) / count,
            'gain': gain, 'loss': loss,
            'both': count - len(wrong_candidate | wrong_reference),
            'z': z_score(gain, loss), 'p': mcnemar_p(gain, loss)}


def total(pairs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Sum the counts of several ``paired`` results (different datasets) into one test."""
    if not pairs:
        raise ValueError('nothing to add up')
    images = sum(p['images'] for p in pairs)
    gain = sum(p['gain'] for p in pairs)
    loss = sum(p['loss'] for p in pairs)

    def accuracy(key: str) -> float:
        return sum(p[key] * p['images'] for p in pairs) / images

    return {'dataset': 'all', 'images': images, 'model_size': pairs[0]['model_size'],
            'candidate_accuracy': accuracy('candidate_accuracy'),
            'reference_accuracy': accuracy('reference_accuracy'),
            'gain': gain, 'loss': loss, 'both': sum(p['both'] for p in pairs),
            'z': z_score(gain, loss), 'p': mcnemar_p(gain, loss)}


def format_pairs(pairs: Sequence[Dict[str, Any]], summed: Optional[Dict[str, Any]] = None) -> str:
    """Return a table: a line per dataset (and the sum), accuracies, +gain / -loss, z, p."""
    lines = ['%-28s %7s %10s %10s %13s %6s %7s' % ('dataset', 'images', 'candidate', 'reference',
                                                   '+gain/-loss', 'z', 'p')]
    for entry in list(pairs) + ([summed] if summed else []):
        lines.append('%-28s %7d %10.3f %10.3f %13s %6.2f %7.3f' % (
            str(entry['dataset'])[-28:], entry['images'], entry['candidate_accuracy'],
            entry['reference_accuracy'], '+%d / -%d' % (entry['gain'], entry['loss']),
            entry['z'], entry['p']))
    return '\n'.join(lines)
