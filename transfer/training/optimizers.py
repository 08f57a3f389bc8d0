"""Learning rate and weight decay per group of variables, which Keras 3 optimizers lack.

`GroupedOptimizer` is a Keras optimizer that hands each variable's gradient to one of several
inner optimizers of one class (Adam, SGD, ...). The learning rate lives on the wrapper and each
group reads it times its own scale, so `ReduceLROnPlateau`, `LearningRateScheduler` and
schedules, which only know `optimizer.learning_rate`, move every group together.
"""
from __future__ import annotations

import keras

from transfer import _compat
from transfer.errors import TransferError, check_number

GROUP_KEYS = {"variables", "paths", "lr_scale", "weight_decay"}
_key = _compat.optimizer_variable_key  # (optimizer, variable) -> the key Keras files it under


def optimizer_named(name: str, lr: float) -> keras.optimizers.Optimizer:
    """A new Keras optimizer of one of `OPTIMIZERS` at learning rate `lr`."""
    return keras.optimizers.get({"class_name": name, "config": {"learning_rate": lr}})


@keras.saving.register_keras_serializable(package="transfer")
class GroupedOptimizer(keras.optimizers.Optimizer):
    """`optimizer` (a name, config or instance: its class and settings) once per group.

    `groups`: dicts with `variables` (or their `paths`), `lr_scale` (default 1) and
    `weight_decay` (default: the optimizer's). Variables in no group form the main group, at
    `learning_rate` (default: the optimizer's). Group variables are built in even when not
    trainable yet, because a Keras optimizer refuses variables it was not built with.
    """

    def __init__(self, optimizer="adam", groups=(), learning_rate=None, name=None):
        template = keras.optimizers.get(optimizer)
        settings = keras.optimizers.serialize(template)
        config = dict(settings["config"])
        if learning_rate is None:
            learning_rate = config["learning_rate"]
        if isinstance(learning_rate, dict):
            learning_rate = keras.optimizers.schedules.deserialize(learning_rate)
        elif isinstance(learning_rate, (int, float)):
            learning_rate = float(learning_rate)
        super().__init__(learning_rate=learning_rate, loss_scale_factor=config.get("loss_scale_factor"), name=name)
        _untracked(self, settings=settings, groups=[_checked_group(group) for group in groups], _route={}, _members=[])
        scales = [(1.0, config.get("weight_decay"))] + [
            (group.get("lr_scale", 1.0), group.get("weight_decay", config.get("weight_decay")))
            for group in self.groups]
        self.group_optimizers = [
            type(template)(**{**config, "learning_rate": _scaled(self, scale), "weight_decay": decay,
                              "name": f"{self.name}_group{index}"})
            for index, (scale, decay) in enumerate(scales)]

    def build(self, variables):
        candidates = {_key(self, v): v for v in variables}
        for group in self.groups:  # with the group variables that do not train yet
            candidates.update({_key(self, v): v for v in group.get("variables", ())})
        variables = list(candidates.values())
        group_keys = [{_key(self, v) for v in group.get("variables", ())} for group in self.groups]
        super().build(variables)
        route = {}
        for variable in variables:
            key, path = _key(self, variable), getattr(variable, "path", None)
            route[key] = next((index for index, (group, keys) in enumerate(zip(self.groups, group_keys), start=1)
                               if key in keys or path in group.get("paths", ())), 0)
        _untracked(self, _route=route, _members=[[v for v in variables if route[_key(self, v)] == index]
                                                 for index in range(len(self.group_optimizers))])
        for inner, members in zip(self.group_optimizers, self._members):
            inner.build(members)

    def apply(self, grads, trainable_variables=None):
        """Each inner optimizer steps on its own variables; `iterations` counts whole steps."""
        if trainable_variables is None:
            variables = _compat.optimizer_built_variables(self)
        else:
            variables = list(trainable_variables)
        if not self.built:
            self.build(variables)
        _compat.optimizer_check_known(self, variables)
        routed = [([], []) for _ in self.group_optimizers]
        for grad, variable in zip(grads, variables):
            if grad is not None:
                group_grads, group_variables = routed[self._route[_key(self, variable)]]
                group_grads.append(grad)
                group_variables.append(variable)
        for inner, (group_grads, group_variables) in zip(self.group_optimizers, routed):
            if group_grads:  # a group with nothing trainable this step keeps its state (and Adam's step count)
                inner.apply(group_grads, group_variables)
        self.iterations.assign_add(1)  # the step variable itself: no gradient accumulation here

    @property
    def variables(self):
        return super().variables + [v for inner in self.group_optimizers for v in inner.variables]

    def finalize_variable_values(self, var_list):
        for inner, members in zip(self.group_optimizers, self._members):
            inner.finalize_variable_values(members)

    def get_config(self):
        groups = [{**{k: v for k, v in group.items() if k != "variables"},
                   "paths": [*group.get("paths", ()), *(v.path for v in group.get("variables", ()))]}
                  for group in self.groups]
        return {"name": self.name, "optimizer": self.settings, "groups": groups,
                "learning_rate": super().get_config()["learning_rate"]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def _untracked(optimizer, **attributes) -> None:
    """Set attributes that hold model variables or plain settings, bypassing Keras' and TF's
    trackers: they are not this optimizer's state and must not be saved or wrapped as such."""
    for name, value in attributes.items():
        object.__setattr__(optimizer, name, value)


def _scaled(optimizer, scale: float):
    """A group's learning rate: the wrapper's, read at every step, times the group's scale."""
    return lambda: optimizer.learning_rate * scale


def _checked_group(group) -> dict:
    unknown = set(group) - GROUP_KEYS
    if unknown:
        raise TransferError(f"unknown optimizer group key(s) {sorted(unknown)}; valid: {sorted(GROUP_KEYS)}")
    check_number("lr_scale", group.get("lr_scale", 1.0), 0, above=True)
    if group.get("weight_decay") is not None:
        check_number("weight_decay", group["weight_decay"], 0)
    return dict(group)
