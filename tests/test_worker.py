"""Worker classes: options as class keywords, inheritance, names, the registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import natskiq
from natskiq import worker as worker_mod


class Plain(natskiq.Worker):
    """No options at all."""

    async def perform(self) -> None:
        pass


class Mailer(natskiq.Worker, queue="emails", retries=5, timeout=30):
    """Every option set by class keyword."""

    async def perform(self, to: str) -> None:
        pass


class UrgentMailer(Mailer, retries=1):
    """Overrides one option of its parent."""


class Named(natskiq.Worker, name="billing.Charge"):
    """Registered under an explicit name."""

    async def perform(self) -> None:
        pass


class Outer:
    class Inner(natskiq.Worker):
        """Nested in another class."""

        def perform(self) -> None:
            pass


def test_defaults_without_keywords() -> None:
    """A worker without keywords uses queue 'default', 25 retries and no timeout."""
    assert Plain.options == natskiq.Options(queue="default", retries=25, timeout=None)


def test_class_keywords_set_options() -> None:
    """queue, retries and timeout given as class keywords become the worker's options."""
    assert Mailer.options == natskiq.Options(queue="emails", retries=5, timeout=30.0)
    assert isinstance(Mailer.options.timeout, float)


def test_timeout_accepts_a_timedelta() -> None:
    """A timedelta timeout is stored as seconds."""

    class Report(natskiq.Worker, timeout=timedelta(minutes=2, milliseconds=500)):
        pass

    assert Report.options.timeout == 120.5


def test_subclass_inherits_and_overrides_options() -> None:
    """A subclass keeps its parent's options and overrides only those it names."""
    assert UrgentMailer.options == natskiq.Options(queue="emails", retries=1, timeout=30.0)
    assert Mailer.options.retries == 5


def test_subclass_without_keywords_keeps_parent_options() -> None:
    """A subclass with no keywords has exactly its parent's options."""

    class Again(Mailer):
        pass

    assert Again.options == Mailer.options


def test_zero_retries_is_allowed() -> None:
    """retries=0 means fail at once, and is not mistaken for 'unset'."""

    class Once(Mailer, retries=0):
        pass

    assert Once.options.retries == 0


def test_base_worker_options_are_untouched() -> None:
    """Subclassing never changes natskiq.Worker's own options."""
    assert natskiq.Worker.options == natskiq.Options()


def test_registered_name_is_module_and_qualname() -> None:
    """Without name=..., a worker is registered as module.QualName."""
    assert Plain.name == "tests.test_worker.Plain"
    assert Outer.Inner.name == "tests.test_worker.Outer.Inner"
    assert UrgentMailer.name == "tests.test_worker.UrgentMailer"


def test_explicit_name_wins() -> None:
    """name=... sets the registered name."""
    assert Named.name == "billing.Charge"
    assert worker_mod.lookup("billing.Charge") is Named
    assert "tests.test_worker.Named" not in worker_mod.registered()


def test_lookup_finds_registered_workers() -> None:
    """lookup() returns the class registered under a name."""
    assert worker_mod.lookup("tests.test_worker.Plain") is Plain
    assert worker_mod.lookup("tests.test_worker.Outer.Inner") is Outer.Inner
    assert worker_mod.registered()["tests.test_worker.Mailer"] is Mailer


def test_lookup_of_unknown_name_raises_unknown_worker() -> None:
    """An unregistered name raises UnknownWorker (a LookupError) naming it."""
    with pytest.raises(natskiq.UnknownWorker, match="os.system") as info:
        worker_mod.lookup("os.system")
    assert info.value.name == "os.system"
    assert isinstance(info.value, LookupError)


def test_importable_but_unregistered_class_is_unknown() -> None:
    """A class that is importable but not a registered Worker cannot be looked up."""
    with pytest.raises(natskiq.UnknownWorker):
        worker_mod.lookup("natskiq.worker.Worker")


def test_registered_returns_a_copy() -> None:
    """Changing what registered() returns does not change the registry."""
    view = worker_mod.registered()
    view.pop("tests.test_worker.Plain", None)  # type: ignore[attr-defined]
    assert worker_mod.lookup("tests.test_worker.Plain") is Plain


def test_redefining_a_name_registers_the_newer_class() -> None:
    """A class defined again under the same name replaces the older one (reloads work)."""

    class First(natskiq.Worker, name="tests.test_worker.redefined"):
        pass

    class Second(natskiq.Worker, name="tests.test_worker.redefined"):
        pass

    assert worker_mod.lookup("tests.test_worker.redefined") is Second


def test_is_async_tells_async_from_plain_perform() -> None:
    """is_async() is true for `async def perform` and false for a plain `def`."""
    assert worker_mod.is_async(Plain)
    assert not worker_mod.is_async(Outer.Inner)


@pytest.mark.parametrize("queue", ["a.b", "a*", "a>", ">", "a b", "", "x" * 65, "tab\t", "ü", "q\n"])
def test_invalid_queue_names_are_refused(queue: str) -> None:
    """A queue name that could inject '.', '*', '>' or white space into a subject raises ConfigError."""
    with pytest.raises(natskiq.ConfigError, match="invalid queue name"):

        class Bad(natskiq.Worker, queue=queue):
            pass


def test_refused_class_is_not_registered() -> None:
    """A class with invalid options leaves nothing in the registry."""
    with pytest.raises(natskiq.ConfigError):

        class NeverRegistered(natskiq.Worker, queue="no.dots"):
            pass

    assert not any(name.endswith("NeverRegistered") for name in worker_mod.registered())


@pytest.mark.parametrize("retries", [-1, 1.5, "3", True])
def test_invalid_retries_are_refused(retries: object) -> None:
    """retries must be a whole number >= 0 (not negative, a float, a string or a bool)."""
    with pytest.raises(natskiq.ConfigError, match="retries"):

        class Bad(natskiq.Worker, retries=retries):  # type: ignore[arg-type]
            pass


@pytest.mark.parametrize("timeout", [0, -1, 0.0, timedelta(0), timedelta(seconds=-5), float("nan")])
def test_invalid_timeouts_are_refused(timeout: object) -> None:
    """A zero, negative or NaN timeout raises ConfigError."""
    with pytest.raises(natskiq.ConfigError, match="timeout"):

        class Bad(natskiq.Worker, timeout=timeout):  # type: ignore[arg-type]
            pass


def test_worker_name_with_white_space_is_refused() -> None:
    """A registered name containing white space raises ConfigError."""
    with pytest.raises(natskiq.ConfigError, match="invalid worker name"):

        class Bad(natskiq.Worker, name="my worker"):
            pass


def test_set_overrides_options_for_one_call() -> None:
    """set() returns a Configured with the changed options and leaves the class alone."""
    configured = Mailer.set(queue="urgent", retries=2)
    assert isinstance(configured, natskiq.Configured)
    assert configured.worker is Mailer
    assert configured.options.queue == "urgent"
    assert configured.options.retries == 2
    assert configured.options.timeout == 30.0
    assert configured.client is None
    assert Mailer.options.queue == "emails"
    assert Mailer.options.retries == 5


def test_set_with_unknown_option_raises() -> None:
    """set() with an option it does not know raises ConfigError naming it."""
    with pytest.raises(natskiq.ConfigError, match="unknown .*option.*priority"):
        Mailer.set(priority=1)


def test_set_validates_option_values() -> None:
    """set() validates values like the class keywords do."""
    with pytest.raises(natskiq.ConfigError, match="invalid queue name"):
        Mailer.set(queue="a.b")
    with pytest.raises(natskiq.ConfigError, match="retries"):
        Mailer.set(retries=-2)


async def test_perform_raises_not_implemented_by_default() -> None:
    """A worker that does not define perform() says so when run."""

    class Empty(natskiq.Worker):
        pass

    with pytest.raises(NotImplementedError, match="Empty"):
        await Empty().perform()


async def test_perform_async_without_a_client_raises_not_connected() -> None:
    """perform_async/_in/_at with no connected client raise NotConnected."""
    with pytest.raises(natskiq.NotConnected, match="natskiq.connect"):
        await Mailer.perform_async("a@example.com")
    with pytest.raises(natskiq.NotConnected):
        await Mailer.perform_in(10, "a@example.com")
    with pytest.raises(natskiq.NotConnected):
        await Mailer.perform_at(datetime.now(UTC) + timedelta(hours=1), "a@example.com")
    with pytest.raises(natskiq.NotConnected):
        await Mailer.set(queue="urgent").perform_async("a@example.com")
