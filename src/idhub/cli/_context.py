"""What a command needs, loaded only when it asks: settings, then services."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from idhub.bootstrap import Services
from idhub.config import Settings, load_settings


class CliContext:
    def __init__(self, *, config_path: str | None) -> None:
        self._config_path = Path(config_path) if config_path else None

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self._config_path)

    @cached_property
    def services(self) -> Services:
        return Services(self.settings)

    def close(self) -> None:
        if "services" in self.__dict__:
            self.services.close()
