"""What a command needs, loaded only when it asks: settings, then services."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from idhub.bootstrap import Services
from idhub.config import Settings, load_settings, redact_url


class CliContext:
    def __init__(self, *, config_path: str | None) -> None:
        self._config_path = Path(config_path) if config_path else None

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self._config_path)

    @cached_property
    def services(self) -> Services:
        return Services(self.settings)

    def database_label(self) -> str | None:
        """The database URL (password masked) once settings were read, for error lines."""
        if "settings" not in self.__dict__:
            return None
        return redact_url(self.settings.database.url)

    def close(self) -> None:
        if "services" in self.__dict__:
            self.services.close()
