"""What a kind of head declares, so that training code reads it instead of probing for it.

A head class (or factory) carries two class attributes:

- `traits`, a `HeadTraits`: how it trains and what it reads. Inherited like any class attribute;
  a class that declares none (a plain `keras.layers.Layer` or `keras.Model`, a function) has
  `HeadTraits()`, the defaults below: a Keras head of one cut that neither averages positions,
  adapts, returns logits, refits nor keeps a subset of cuts.
- `options`, a tuple of `Option`: the keyword arguments of its constructor, `num_classes`
  included (training sets it from the data; it is never a user's option). Declared on the class
  itself: a class that declares none takes the keyword parameters of its constructor (see
  `registry.kind_of`).

`traits_of(head)` reads the traits of a head class, factory or built head.
"""
from __future__ import annotations

import dataclasses


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()  # the default of an option that has none: it must be given


@dataclasses.dataclass(frozen=True)
class Option:
    """One keyword argument of a head's constructor: its name, its default, what it accepts."""

    name: str
    default: object = REQUIRED
    accepts: str = ""


@dataclasses.dataclass(frozen=True)
class HeadTraits:
    """What a kind of head is, declared by its class and read before one is built.

    keras: trained by Keras `model.fit` (so thawed layers can train with it); False: fitted by
      scikit-learn, `fit(X, y)` then `predict_proba(X)` (the `logreg` probe).
    several_cuts: takes a list of feature tensors, one per cut (a tensor when there is one cut),
      and standardizes each itself (`multilayer`); without it, a head of several cuts is refused.
    averages_positions: (option, value): with that option at that value (its default counts),
      the head first averages each feature tensor over its positions, so that a cache may store
      the averages instead of the maps. None: it reads the positions.
    adapts: has `standardize` (bool) and `adapt(features, steps=None)`, which training calls on
      the training features when `standardize` is on, before it trains.
    logits: has `logits` (bool): True when it returns logits rather than probabilities.
    refits: has `refit` (a fraction, 0: none) and `begin_refit()`: trained once more after it
      when refit > 0.
    subsets: keeps a subset of its cuts after training: `kept` (cut indices), `kept_features()`,
      `set_mask(features)`, `subset(kept)` (a head on those cuts only) and `strength`.
    concatenates: its selection has a no-sparsity end: `joined(inputs, training)` (what its
      classifier reads), `fit_concatenation(joined, labels)` (every input kept, fitted as plain
      concatenation) and `concatenation` (bool: whether to try it). Training keeps that end when
      it scores higher on validation than the trained head, so the selection is never worse
      there than keeping everything.
    """

    keras: bool = True
    several_cuts: bool = False
    averages_positions: tuple[str, object] | None = None
    adapts: bool = False
    logits: bool = False
    refits: bool = False
    subsets: bool = False
    concatenates: bool = False


def traits_of(head) -> HeadTraits:
    """The `HeadTraits` a head class, factory or built head declares; the defaults if none."""
    traits = getattr(head, "traits", None)
    return traits if isinstance(traits, HeadTraits) else HeadTraits()
