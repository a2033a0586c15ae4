"""Page text in Simplified Chinese and English. The locale comes from a `lang` cookie set by
the switch on each page, else from `Accept-Language`, else the configured default."""

from __future__ import annotations

from starlette.requests import Request

LOCALES = ("zh-CN", "en")

MESSAGES: dict[str, dict[str, str]] = {
    "zh-CN": {
        "app_name": "idhub 统一身份认证",
        "error_title": "出错了",
        "error_back": "返回",
        "request_id": "请求编号",
        "switch_language": "English",
    },
    "en": {
        "app_name": "idhub single sign-on",
        "error_title": "Something went wrong",
        "error_back": "Back",
        "request_id": "Request id",
        "switch_language": "中文",
    },
}


def pick_locale(request: Request, default: str = "zh-CN") -> str:
    chosen = request.query_params.get("lang") or request.cookies.get("lang")
    if chosen in LOCALES:
        return chosen
    header = request.headers.get("accept-language", "")
    ranked: list[tuple[float, str]] = []
    for part in header.split(","):
        pieces = part.strip().split(";")
        tag = pieces[0].strip().lower()
        quality = 1.0
        for param in pieces[1:]:
            if param.strip().startswith("q="):
                try:
                    quality = float(param.strip()[2:])
                except ValueError:
                    quality = 0.0
        if tag:
            ranked.append((quality, tag))
    for _quality, tag in sorted(ranked, key=lambda item: -item[0]):
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return default if default in LOCALES else "zh-CN"


def translator(locale: str) -> dict[str, str]:
    return MESSAGES.get(locale, MESSAGES["zh-CN"])
