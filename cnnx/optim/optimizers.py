"""Optimizers: SGD, Momentum and Adam, updating parameters in place on their device.

An optimizer walks ``target.named_parameters()`` (a model or a single layer) at every step, so it sees
the gradients the last backward pass wrote. Step sizes are host floats: nothing here reads a device
value back. ``state_dict()`` / ``load_state_dict()`` expose the state (step count and moments) as host
arrays for checkpoints.
"""

from __future__ import annotations

import math

from cnnx.errors import ConfigError


class Optimizer:
    """Base class: holds the target, the learning rate and per-parameter state keyed by parameter name.

    Mathematics: docs/math.md#optimizers
    """

    name = "optimizer"
    slots: tuple[str, ...] = ()  # the per-parameter state this optimizer keeps ("m", "v", ...)

    def __init__(self, target, lr: float, weight_decay: float = 0.0):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"the learning rate must be a positive finite number, got {lr!r}")
        ok = isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool)
        if not (ok and math.isfinite(weight_decay) and weight_decay >= 0):
            raise ConfigError(f"weight decay must be a finite number >= 0, got {weight_decay!r}")
        self.weight_decay = float(weight_decay)
        self.target = target
        self.xp = target.xp
        self.lr = float(lr)
        self.steps = 0
        self.state: dict[str, dict] = {}  # slot name ("m", "v", ...) -> parameter name -> device array
        self._work: dict = {}  # dtype -> one flat scratch array, reused by every update (not state)

    def step(self, names=None) -> None:
        """Apply one update to every parameter that has a gradient, or only to those in ``names``: a
        worker's share of a data-parallel step (see :mod:`cnnx.parallel`), where each worker updates
        its own parameters. The step count advances all the same."""
        self.steps += 1
        only = None if names is None else set(names)
        for name, param, grad in self.target.named_parameters():
            if grad is not None and (only is None or name in only):
                self.update(name, param, grad)

    def update(self, name: str, param, grad) -> None:
        raise NotImplementedError

    def _slot(self, slot: str, name: str, like):
        table = self.state.setdefault(slot, {})
        if name not in table:
            table[name] = self.xp.zeros_like(like)
        return table[name]

    def _scratch(self, like):
        """A scratch array shaped like ``like``, a view of one buffer shared by all parameters: the
        updates below write their intermediate results there instead of allocating temporaries."""
        work = self._work.get(like.dtype)
        if work is None or work.size < like.size:
            work = self._work[like.dtype] = self.xp.empty((like.size,), dtype=like.dtype)
        return work[: like.size].reshape(like.shape)

    def config(self) -> dict:
        """Hyper-parameters that rebuild this optimizer (JSON-friendly)."""
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay}

    def _l2(self, param, grad):
        """The gradient of loss + weight_decay / 2 * |p|^2 (L2 regularisation, for SGD and Momentum), in
        the scratch array; the gradient itself when there is no decay."""
        if not self.weight_decay:
            return grad
        work = self._scratch(param)
        self.xp.multiply(param, self.weight_decay, out=work)
        work += grad
        return work

    def state_dict(self, to_host) -> dict:
        """A snapshot of the step count and every moment as host arrays: ``{"steps": n, "m/0.W": ...}``.

        The arrays are copies: later steps do not change a snapshot (on the CPU ``to_host`` alone would
        alias).
        """
        flat = {"steps": self.steps}
        for slot, table in self.state.items():
            for name, value in table.items():
                flat[f"{slot}/{name}"] = to_host(value).copy()
        return flat

    def load_state_dict(self, flat: dict, to_device) -> None:
        """Restore what :meth:`state_dict` returned, moving arrays with ``to_device`` (which may cast: a
        parity test moves float64 moments into a float32 run). The state is taken as it is: one read
        from a file is checked first (:func:`cnnx.io.checkpoint.check_optimizer_state`)."""
        moved: dict[str, dict] = {}
        for key, value in flat.items():
            if key != "steps":
                slot, _, name = key.partition("/")
                moved.setdefault(slot, {})[name] = to_device(value).copy()  # owned: never aliases the source
        self.steps, self.state = int(flat["steps"]), moved  # host: a count, or a 0-d host array of one


class SGD(Optimizer):
    """Plain gradient descent: p <- p - lr * g, with g + weight_decay * p under L2 weight decay.

    Mathematics: docs/math.md#sgd
    """

    name = "sgd"

    def __init__(self, target, lr: float = 0.01, weight_decay: float = 0.0):
        super().__init__(target, lr, weight_decay)

    def update(self, name, param, grad):
        grad = self._l2(param, grad)
        step = self._scratch(param)
        self.xp.multiply(grad, self.lr, out=step)
        param -= step


class Momentum(Optimizer):
    """Gradient descent with an exponential moving average of the gradients (the original report's form):

        m_t = beta * m_{t-1} + (1 - beta) * g_t;   p <- p - lr * m_t

    The classical (heavy-ball) form v_t = beta * v_{t-1} + g_t, p <- p - lr * v_t gives the same path
    with its learning rate multiplied by (1 - beta): m_t = (1 - beta) * v_t. So lr 0.1 here matches
    classical momentum 0.9 with lr 0.01. Weight decay is L2: g + weight_decay * p enters the average.

    Mathematics: docs/math.md#momentum
    """

    name = "momentum"
    slots = ("m",)

    def __init__(self, target, lr: float = 0.01, beta: float = 0.9, weight_decay: float = 0.0):
        super().__init__(target, lr, weight_decay)
        if not 0 <= beta < 1:
            raise ConfigError(f"momentum beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)

    def update(self, name, param, grad):
        m = self._slot("m", name, param)
        if self.weight_decay:
            grad = self._l2(param, grad).copy()  # the scratch array is needed below
        work = self._scratch(param)
        m *= self.beta
        self.xp.multiply(grad, 1 - self.beta, out=work)
        m += work
        self.xp.multiply(m, self.lr, out=work)
        param -= work

    def config(self):
        return {**super().config(), "beta": self.beta}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba, 2015):

    m_t = b1 m + (1 - b1) g;   v_t = b2 v + (1 - b2) g^2
    p <- p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m_t / (1 - b1^t),  v_hat = v_t / (1 - b2^t)

    With ``weight_decay`` the decay is decoupled (AdamW, Loshchilov & Hutter, 2019): after the step,
    p <- p - lr * weight_decay * p, outside the moments, so it does not pass through the adaptive scaling.

    Mathematics: docs/math.md#adam, docs/math.md#adamw
    """

    name = "adam"
    slots = ("m", "v")

    def __init__(self, target, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0):  # fmt: skip
        super().__init__(target, lr, weight_decay)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and eps > 0):
            raise ConfigError(f"Adam needs 0 <= beta1, beta2 < 1 and eps > 0, got {beta1}, {beta2}, {eps}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def update(self, name, param, grad):
        xp = self.xp
        m, v, work = self._slot("m", name, param), self._slot("v", name, param), self._scratch(param)
        # In place, through one scratch array: no temporaries the size of the parameter.
        m *= self.beta1
        xp.multiply(grad, 1 - self.beta1, out=work)
        m += work
        v *= self.beta2
        xp.multiply(grad, grad, out=work)
        work *= 1 - self.beta2
        v += work
        # The bias corrections are host scalars. With c1 = 1 - b1^t and s2 = sqrt(1 - b2^t),
        # lr * (m / c1) / (sqrt(v) / s2 + eps) == (lr * s2 / c1) * m / (sqrt(v) + eps * s2): exact algebra
        # that leaves two scalar passes out.
        t = self.steps
        s2 = math.sqrt(1 - self.beta2**t)
        xp.sqrt(v, out=work)
        work += self.eps * s2
        xp.divide(m, work, out=work)
        work *= self.lr * s2 / (1 - self.beta1**t)
        if self.weight_decay:  # decoupled: p * (1 - lr * wd), after the adaptive step is taken from p
            param *= 1 - self.lr * self.weight_decay
        param -= work

    def config(self):
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, Momentum, Adam)}


def make_optimizer(name: str, target, lr: float | None = None, **kwargs) -> Optimizer:
    """Build an optimizer by name ("sgd", "momentum", "adam"); ``lr=None`` keeps its default."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}") from None
    if lr is not None:
        kwargs["lr"] = lr
    return cls(target, **kwargs)
