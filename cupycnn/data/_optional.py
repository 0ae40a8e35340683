"""Optional dependencies, imported when first needed with a message that says how to get them."""
import importlib


def require(module, package, user):
    """Import `module` (from the pip package `package`) for `user`, or raise an ImportError
    that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{user} needs {package} ({e}); install it with "
                          f"`pip install {package}` (it is a dependency of cupycnn: "
                          f"`pip install -e .` installs it)") from None
