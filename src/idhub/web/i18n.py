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
        # --- login, consent and logout pages (sessions area) ---
        "login_title": "登录",
        "login_subtitle": "使用企业账号登录",
        "login_continue_to": "登录后将继续访问",
        "username": "用户名",
        "password": "密码",
        "sign_in": "登录",
        "login_failed": "用户名或密码错误。",
        "directory_unreachable": "目录服务暂时无法连接，请稍后再试。",
        "form_expired": "页面已过期，请重新登录。",
        "too_many_attempts": "尝试次数过多，请 {minutes} 分钟后再试。",
        "signed_in_as": "当前登录用户",
        "sign_out": "退出登录",
        "consent_title": "授权确认",
        "consent_intro": "以下应用请求使用您的账号登录，并获取这些信息：",
        "consent_remember": "您的选择会被记住，下次不再询问。",
        "consent_allow": "同意",
        "consent_deny": "拒绝",
        "scope_openid": "确认您的身份",
        "scope_profile": "姓名、用户名、工号与部门",
        "scope_email": "电子邮箱地址",
        "scope_phone": "手机号码",
        "scope_offline_access": "在您未登录时继续访问（刷新令牌）",
        "scope_other": "其他权限",
        "logout_title": "退出登录",
        "logout_confirm": "确定要退出吗？您将同时退出所有通过 idhub 登录的系统。",
        "logout_yes": "退出",
        "logout_no": "取消",
        "logged_out": "您已安全退出所有系统。",
        "logout_return": "返回应用",
        "authorize_error": "无法完成登录请求。",
        "unknown_client": "发起登录请求的应用未在 idhub 注册。",
        "bad_redirect_uri": "应用提供的回调地址与注册信息不一致，为安全起见已停止跳转。",
        "bad_post_logout_uri": "退出后的跳转地址未在 idhub 注册，已停止跳转。",
        "bad_request": "请求参数不正确。",
        # --- CAS server front ---
        "cas_unknown_service": (
            "发起登录请求的系统（CAS 服务地址）未在 idhub 注册，为安全起见已停止跳转。"
        ),
        "cas_access_denied": "您拒绝了该系统的访问请求。",
        "cas_post_continue": "继续",
        "scope_groups": "您所在的用户组",
        # --- second factors (login step and account security page) ---
        "mfa_title": "两步验证",
        "mfa_intro": "请再验证一次身份：",
        "mfa_code": "身份验证器应用中的 6 位验证码",
        "mfa_verify": "验证",
        "mfa_remember": "在此浏览器上 {days} 天内不再询问",
        "mfa_use_recovery": "无法使用验证器？输入恢复码",
        "mfa_recovery_code": "恢复码",
        "mfa_other_account": "使用其他账号登录",
        "second_factor_failed": "验证未通过，请重试。",
        "passkey_sign_in": "使用通行密钥登录",
        "passkey_use": "使用通行密钥验证",
        "passkey_failed": "通行密钥验证未完成，请重试。",
        "passkeys_title": "通行密钥",
        "passkey_name": "名称（例如：工作电脑）",
        "passkey_add": "添加通行密钥",
        "account_security_title": "账号安全",
        "mfa_required_notice": (
            "您的账号必须启用两步验证。请先设置身份验证器应用或通行密钥，然后继续。"
        ),
        "mfa_continue": "继续访问应用",
        "mfa_recovery_title": "恢复码",
        "mfa_recovery_once": "请妥善保存这些恢复码：每个只能使用一次，且只显示这一次。",
        "mfa_recovery_left": "剩余可用恢复码：{n} 个。",
        "mfa_recovery_new": "生成新的恢复码",
        "mfa_totp_title": "身份验证器应用",
        "mfa_totp_on": "已启用。",
        "mfa_totp_set_up": "设置身份验证器应用",
        "mfa_totp_scan": "用身份验证器应用扫描二维码，然后输入显示的验证码。",
        "mfa_totp_manual": "无法扫描时手动输入密钥：",
        "mfa_totp_exists": "已设置身份验证器应用，如需更换请先移除。",
        "mfa_code_wrong": "验证码不正确，请重试。",
        "mfa_remove": "移除",
        "mfa_devices_title": "记住的浏览器",
        "mfa_devices_none": "没有记住的浏览器。",
        "mfa_forget": "不再记住",
        "mfa_saved": "已保存。",
        "mfa_enrolled": "两步验证已启用。",
        # --- error pages for HTTP-level errors (web/errors.py, key "http_<code>") ---
        "http_not_found": "您访问的页面不存在，请检查地址是否正确。",
        "http_method_not_allowed": "该地址不支持这种请求方式。",
        "http_error": "请求无法完成。",
        "http_server_error": "服务器内部出错，请稍后再试；如需联系管理员，请提供下方的请求编号。",
        "http_storage_unavailable": "数据库暂时无法连接，请稍后再试。",
        "http_schema_not_ready": "idhub 尚未完成初始化，请稍后再试。",
        "http_too_many_requests": "来自您所在地址的请求过多，请一分钟后再试。",
        # --- the page after a plain sign-in (web/login.py) ---
        "signed_in_title": "您已登录",
        "signed_in_department": "部门",
        "signed_in_since": "登录时间",
        "signed_in_systems": "本次登录已进入的系统",
        "signed_in_next": "现在打开公司的业务系统（如 OA、报销）无需再次登录。",
        "signed_in_account": "管理账号安全：密码、两步验证、通行密钥",
        # --- sign-in through an upstream provider (web/upstream.py) ---
        "upstream_dingtalk": "钉钉扫码登录",
        "upstream_wecom": "企业微信登录",
        "upstream_state": "这次登录已失效或不是在本浏览器发起的，请回到登录页重新登录。",
        "upstream_cancelled": "登录未完成（已取消或未授权），请重新登录。",
        "upstream_code_refused": "登录凭证无效或已过期，请重新扫码登录。",
        "upstream_unknown_user": "该账号尚未开通统一身份认证，请联系管理员。",
        "upstream_user_disabled": "该账号已停用，请联系管理员。",
        "upstream_not_member": "您不是本企业的成员，无法登录。",
        "upstream_unavailable": "登录服务暂时无法连接，请稍后再试或使用密码登录。",
        "upstream_unknown_provider": "没有这种登录方式。",
        "upstream_failed": "通过第三方登录失败，请稍后再试或使用密码登录。",
    },
    "en": {
        "app_name": "idhub single sign-on",
        "error_title": "Something went wrong",
        "error_back": "Back",
        "request_id": "Request id",
        "switch_language": "中文",
        # --- login, consent and logout pages (sessions area) ---
        "login_title": "Sign in",
        "login_subtitle": "Sign in with your company account",
        "login_continue_to": "After signing in you continue to",
        "username": "Username",
        "password": "Password",
        "sign_in": "Sign in",
        "login_failed": "Wrong username or password.",
        "directory_unreachable": "The directory is unreachable, please try again later.",
        "form_expired": "This page has expired; please sign in again.",
        "too_many_attempts": "Too many attempts. Try again in {minutes} min.",
        "signed_in_as": "Signed in as",
        "sign_out": "Sign out",
        "consent_title": "Allow access?",
        "consent_intro": "This application wants to sign you in and read:",
        "consent_remember": "Your choice is remembered; you will not be asked again.",
        "consent_allow": "Allow",
        "consent_deny": "Deny",
        "scope_openid": "Who you are",
        "scope_profile": "Your name, username, employee number and department",
        "scope_email": "Your email address",
        "scope_phone": "Your phone number",
        "scope_offline_access": "Access while you are not signed in (refresh tokens)",
        "scope_other": "Other permissions",
        "logout_title": "Sign out",
        "logout_confirm": (
            "Sign out? You will be signed out of every system you entered through idhub."
        ),
        "logout_yes": "Sign out",
        "logout_no": "Cancel",
        "logged_out": "You have been signed out of all systems.",
        "logout_return": "Back to the application",
        "authorize_error": "The sign-in request cannot be completed.",
        "unknown_client": "The application that sent you here is not registered with idhub.",
        "bad_redirect_uri": (
            "The application's return address does not match its registration, "
            "so idhub will not send you there."
        ),
        "bad_post_logout_uri": (
            "The address to return to after signing out is not registered, "
            "so idhub will not send you there."
        ),
        "bad_request": "The request is not valid.",
        # --- CAS server front ---
        "cas_unknown_service": (
            "The system that sent you here (its CAS service address) is not registered with "
            "idhub, so idhub will not send you there."
        ),
        "cas_access_denied": "You denied this system access.",
        "cas_post_continue": "Continue",
        "scope_groups": "The groups you belong to",
        # --- second factors (login step and account security page) ---
        "mfa_title": "Two-step verification",
        "mfa_intro": "Please confirm it is you:",
        "mfa_code": "The 6-digit code from your authenticator app",
        "mfa_verify": "Verify",
        "mfa_remember": "Do not ask again on this browser for {days} days",
        "mfa_use_recovery": "Cannot use your authenticator? Enter a recovery code",
        "mfa_recovery_code": "Recovery code",
        "mfa_other_account": "Sign in with another account",
        "second_factor_failed": "That did not work; please try again.",
        "passkey_sign_in": "Sign in with a passkey",
        "passkey_use": "Use a passkey",
        "passkey_failed": "The passkey check did not complete; please try again.",
        "passkeys_title": "Passkeys",
        "passkey_name": "Name (e.g. work laptop)",
        "passkey_add": "Add a passkey",
        "account_security_title": "Account security",
        "mfa_required_notice": (
            "Your account must use two-step verification. Set up an authenticator app or a "
            "passkey to continue."
        ),
        "mfa_continue": "Continue to the application",
        "mfa_recovery_title": "Recovery codes",
        "mfa_recovery_once": (
            "Keep these recovery codes safe: each works once, and they are shown only now."
        ),
        "mfa_recovery_left": "Recovery codes left: {n}.",
        "mfa_recovery_new": "Make new recovery codes",
        "mfa_totp_title": "Authenticator app",
        "mfa_totp_on": "Set up.",
        "mfa_totp_set_up": "Set up an authenticator app",
        "mfa_totp_scan": (
            "Scan the QR code with your authenticator app, then enter the code it shows."
        ),
        "mfa_totp_manual": "Cannot scan? Enter this key by hand:",
        "mfa_totp_exists": "An authenticator app is already set up; remove it first to change it.",
        "mfa_code_wrong": "That code is not right; please try again.",
        "mfa_remove": "Remove",
        "mfa_devices_title": "Remembered browsers",
        "mfa_devices_none": "No remembered browsers.",
        "mfa_forget": "Forget",
        "mfa_saved": "Saved.",
        "mfa_enrolled": "Two-step verification is on.",
        # --- error pages for HTTP-level errors (web/errors.py, key "http_<code>") ---
        "http_not_found": "There is no page at this address; check that it is spelt right.",
        "http_method_not_allowed": "This address does not accept this kind of request.",
        "http_error": "The request could not be completed.",
        "http_server_error": (
            "Something failed inside idhub; try again shortly. If you contact an administrator, "
            "give them the request id below."
        ),
        "http_storage_unavailable": "The database cannot be reached right now; try again shortly.",
        "http_schema_not_ready": "idhub is not set up completely yet; try again later.",
        "http_too_many_requests": "Too many requests from your address; try again in a minute.",
        # --- the page after a plain sign-in (web/login.py) ---
        "signed_in_title": "You are signed in",
        "signed_in_department": "Department",
        "signed_in_since": "Signed in at",
        "signed_in_systems": "Systems entered in this session",
        "signed_in_next": (
            "You can now open your company's systems (OA, reimbursement) without signing in again."
        ),
        "signed_in_account": "Account security: password, two-step verification, passkeys",
        # --- sign-in through an upstream provider (web/upstream.py) ---
        "upstream_dingtalk": "Sign in with DingTalk",
        "upstream_wecom": "Sign in with WeCom",
        "upstream_state": (
            "This sign-in has expired or was started in another browser; please start again "
            "from the sign-in page."
        ),
        "upstream_cancelled": "The sign-in was cancelled or not approved; please try again.",
        "upstream_code_refused": "The sign-in code was refused or has expired; please try again.",
        "upstream_unknown_user": (
            "This account has no idhub identity yet; please contact your administrator."
        ),
        "upstream_user_disabled": "This account is disabled; please contact your administrator.",
        "upstream_not_member": "You are not a member of this organisation and cannot sign in.",
        "upstream_unavailable": (
            "The sign-in service cannot be reached right now; try again later or use your password."
        ),
        "upstream_unknown_provider": "There is no such way to sign in.",
        "upstream_failed": "Signing in through the other provider failed; try again later.",
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
