"""Stage 1, signatures: one call of a worker, written down to run later (a step of a chain).

``Fetch.s("https://example.com")`` returns a :class:`Signature`: the
worker's registered name, the call's arguments (checked JSON-native now,
as ``perform_async`` checks them) and the options its job will run with.
:meth:`Signature.set` changes the per-call options (``queue``, ``retries``,
``keep_result``) and ``pass_result``: whether the step receives the return
value of the step before it as its first argument. A signature is a value
and does nothing by itself; :func:`natskiq.chain` (:mod:`natskiq.flow.chains`)
enqueues signatures. No I/O.
"""

from __future__ import annotations

from typing import Any

import attrs

from natskiq.envelope import check_arguments
from natskiq.errors import ConfigError
from natskiq.options import PER_CALL_OPTIONS, Options

SIGNATURE_OPTIONS = PER_CALL_OPTIONS | {"pass_result"}
"""What :meth:`Signature.set` takes: the per-call options, and ``pass_result``."""


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Signature:
    """One call of a worker, to run later: ``SendEmail.s(42)``.

    Attributes:
        name: the worker's registered name (``class`` in the envelope).
        args: the positional arguments, JSON-native.
        kwargs: the keyword arguments, JSON-native.
        options: the options the job runs with (the class's, changed by ``set``).
        pass_result: whether the job receives the return value of the step
            before it, as its first positional argument (default False).
    """

    name: str
    args: tuple[Any, ...] = attrs.field(default=(), converter=_as_tuple)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    options: Options = Options()
    pass_result: bool = attrs.field(default=False)

    def __attrs_post_init__(self) -> None:
        check_arguments(self.args, self.kwargs)
        if type(self.pass_result) is not bool:
            raise ConfigError(f"pass_result must be True or False, not {self.pass_result!r}")

    def set(self, **options: Any) -> Signature:
        """The same call with other options: ``Parse.s().set(pass_result=True, queue="cpu")``.

        Args:
            **options: ``queue``, ``retries``, ``keep_result`` (as
                :meth:`natskiq.Worker.set` takes them) and ``pass_result``.

        Raises:
            ConfigError: an option is unknown or invalid.
        """
        unknown = set(options) - SIGNATURE_OPTIONS
        if unknown:
            raise ConfigError(
                f"unknown signature option(s): {', '.join(sorted(unknown))} "
                f"(a signature's set() takes {', '.join(sorted(SIGNATURE_OPTIONS))})"
            )
        pass_result = options.pop("pass_result", self.pass_result)
        return attrs.evolve(self, options=attrs.evolve(self.options, **options), pass_result=pass_result)
