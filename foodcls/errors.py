"""Exception types raised deep in foodcls and reported once, as one line, by the CLI."""


class FoodclsError(Exception):
    """Base class: a problem with the user's input that deserves a one-line message."""


class ConfigError(FoodclsError):
    """The config file or a --set override is missing, malformed or invalid."""


class DataError(FoodclsError):
    """A data file is missing, malformed or holds invalid values."""


class CheckpointError(FoodclsError):
    """A checkpoint is missing, truncated, corrupt or not a foodcls checkpoint."""


class RunError(FoodclsError):
    """A run directory is missing or unusable."""


class DownloadError(FoodclsError):
    """A download failed (HTTP status, timeout, dropped connection)."""


class WriteError(FoodclsError):
    """A file could not be written (disk full, file-size limit, permissions): nothing partial is left."""


class ResourceError(FoodclsError):
    """The machine cannot do what was asked (a model too big for its memory)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none): third-party errors can
    run to pages, and ours are one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def require_extra(module: str, extra: str, what: str) -> None:
    """Refuse, in one line, a command whose optional dependency is not installed (found without importing it)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise FoodclsError(f"{what} needs the '{extra}' extra: pip install 'foodcls[{extra}]'")
