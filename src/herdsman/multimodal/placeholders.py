"""Where a request's images go in its token ids. Apart from the processors (numpy, Pillow): the
pipeline expands placeholders for every model, and a text-only gateway imports no image stack."""

from __future__ import annotations

from collections.abc import Sequence


def expand_placeholders(
    input_ids: Sequence[int],
    image_token_id: int,
    counts: Sequence[int] | Sequence[Sequence[int]],
) -> tuple[list[int], list[tuple[int, int]]]:
    """Replace the i-th `image_token_id` in `input_ids` with image i's placeholder tokens.

    `counts[i]` is either an int (the token is repeated that many times) or a token sequence
    (families with row breaks or tile separators). Returns the new ids and, per image, the
    (offset, length) of its replacement in them — the engines' placeholder ranges.
    """
    out: list[int] = []
    ranges: list[tuple[int, int]] = []
    k = 0
    for tok in input_ids:
        if tok != image_token_id:
            out.append(tok)
            continue
        if k >= len(counts):
            raise ValueError(
                f"prompt has more image tokens ({image_token_id}) than images ({len(counts)})"
            )
        repl = counts[k]
        start = len(out)
        if isinstance(repl, int):
            out.extend([image_token_id] * repl)
        else:
            out.extend(repl)
        ranges.append((start, len(out) - start))
        k += 1
    if k != len(counts):
        raise ValueError(f"prompt has {k} image tokens but {len(counts)} images were given")
    return out, ranges
