"""The --help of cupycnn's commands: descriptions as written (paragraphs and examples kept) and
each option's default where it has one, never "(default: None)" or "(default: False)"."""
import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or not action.option_strings:
            return text
        default = self.default_for(action)
        return text if default is None else f"{text} (default: {default})"

    def default_for(self, action):
        """What the help says the option's default is; None: nothing (no default, a flag
        that is off, or one the help text explains). `is`, not `in`: 0 == False."""
        if action.default is None or action.default is False or \
                action.default is argparse.SUPPRESS:
            return None
        return "%(default)s"
