"""A throwaway OpenLDAP `slapd` for tests and benchmarks, plus a generated company directory.

`Slapd(workdir).start()` writes a `slapd.conf` (mdb backend, refint so renames follow into
group `member` values, a read-only service account, a second one whose paged searches are
capped to provoke truncated results), bulk-loads LDIF with `slapadd` while the server is
down (much faster than LDAP adds), then runs slapd in the foreground on a free 127.0.0.1
port. TLS (ldaps:// and StartTLS) uses a throwaway CA made with `cryptography`.

`company_ldif(...)` produces a directory shaped like a real company: nested OUs
(总部/财务部/费用核算组 ...), Chinese names, `groupOfNames` groups (some nested), department
managers on the OUs, and a few users disabled through `pwdAccountLockedTime`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SUFFIX = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"
SERVICE_DN = f"cn=idhub-sync,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "sync-secret"
LIMITED_DN = f"cn=limited,ou=services,{SUFFIX}"
LIMITED_PASSWORD = "limited-secret"
PEOPLE_BASE = f"ou=people,{SUFFIX}"
GROUPS_BASE = f"ou=groups,{SUFFIX}"
# Every generated user signs in with this password unless a test sets another.
USER_PASSWORD = "Passw0rd!"

SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssha(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(4)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()  # noqa: S324 - LDAP {SSHA} format
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


# ------------------------------------------------------------------ LDIF


def _ldif_line(attr: str, value: str) -> str:
    # RFC 2849: values that are not "safe strings" (non-ASCII, leading space/colon/<) go base64.
    raw = value.encode("utf-8")
    safe = value.isascii() and value[:1] not in {" ", ":", "<"} and "\n" not in value
    if safe and not value.endswith(" "):
        return f"{attr}: {value}"
    return f"{attr}:: {base64.b64encode(raw).decode('ascii')}"


def ldif_entry(dn: str, attrs: dict[str, list[str]]) -> str:
    lines = [_ldif_line("dn", dn)]
    for attr, values in attrs.items():
        lines.extend(_ldif_line(attr, v) for v in values)
    return "\n".join(lines) + "\n\n"


SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡"
    "余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯"
    "龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥建华飞鹏辉玲俊峰晶"
    "婷欣怡宇轩子涵浩然梓萱思雨佳琪雪梅志强文博天宇晓东海燕"
)
TOP_DEPARTMENTS = (
    "财务部",
    "人力资源部",
    "信息技术部",
    "市场部",
    "销售部",
    "采购部",
    "法务部",
    "行政部",
)
SUB_DEPARTMENTS = (
    "费用核算组",
    "预算组",
    "资金组",
    "税务组",
    "招聘组",
    "培训组",
    "开发组",
    "运维组",
)


@dataclass
class Person:
    uid: str
    dn: str
    name: str
    department: str  # "/总部/财务部/费用核算组"
    mail: str
    phone: str
    employee_number: str
    disabled: bool = False


@dataclass
class Company:
    """What `company_ldif` generated, so tests can assert against it."""

    ldif: str
    people: list[Person] = field(default_factory=list)
    departments: list[str] = field(default_factory=list)  # paths, e.g. "/总部/财务部"
    groups: dict[str, list[str]] = field(default_factory=dict)  # cn -> member DNs
    managers: dict[str, str] = field(default_factory=dict)  # department path -> manager uid

    def person(self, uid: str) -> Person:
        return next(p for p in self.people if p.uid == uid)


def _department_dn(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    return ",".join(f"ou={p}" for p in reversed(parts)) + f",{PEOPLE_BASE}"


def company_ldif(
    *,
    users: int = 60,
    departments: int = 20,
    groups: int = 8,
    disabled_every: int = 15,
    seed: int = 7,
    hash_passwords: bool = True,
    members_per_group: int = 0,
) -> Company:
    """A realistic company: 总部 with top departments, sub-groups, people spread over them."""
    rng = random.Random(seed)
    base_entries = [
        ldif_entry(
            SUFFIX,
            {"objectClass": ["dcObject", "organization"], "dc": ["example"], "o": ["示例集团"]},
        ),
        ldif_entry(
            f"ou=services,{SUFFIX}", {"objectClass": ["organizationalUnit"], "ou": ["services"]}
        ),
        ldif_entry(
            SERVICE_DN,
            {
                "objectClass": ["organizationalRole", "simpleSecurityObject"],
                "cn": ["idhub-sync"],
                "userPassword": [ssha(SERVICE_PASSWORD)],
            },
        ),
        ldif_entry(
            LIMITED_DN,
            {
                "objectClass": ["organizationalRole", "simpleSecurityObject"],
                "cn": ["limited"],
                "userPassword": [ssha(LIMITED_PASSWORD)],
            },
        ),
        ldif_entry(PEOPLE_BASE, {"objectClass": ["organizationalUnit"], "ou": ["people"]}),
        ldif_entry(GROUPS_BASE, {"objectClass": ["organizationalUnit"], "ou": ["groups"]}),
    ]
    # Department tree: /总部, then top departments, then sub-departments, then numbered teams.
    paths = ["/总部"]
    tops = [f"/总部/{name}" for name in TOP_DEPARTMENTS]
    paths.extend(tops[: max(0, departments - 1)])
    index = 0
    while len(paths) < departments:
        top = tops[index % len(tops)]
        sub_name = SUB_DEPARTMENTS[(index // len(tops)) % len(SUB_DEPARTMENTS)]
        round_ = index // (len(tops) * len(SUB_DEPARTMENTS))
        path = f"{top}/{sub_name}" + (f"{round_}" if round_ else "")
        paths.append(path)
        index += 1
    company = Company(ldif="", departments=list(paths))

    password_value = ssha(USER_PASSWORD, b"salt") if hash_passwords else USER_PASSWORD
    for n in range(users):
        uid = f"u{n:06d}"
        name = SURNAMES[n % len(SURNAMES)] + GIVEN[(n * 7 + n // len(SURNAMES)) % len(GIVEN)]
        if n % 3 == 0:
            name += GIVEN[(n * 13) % len(GIVEN)]
        department = (
            paths[0]
            if n == 0
            else paths[1 + rng.randrange(len(paths) - 1)]
            if len(paths) > 1
            else paths[0]
        )
        dn = f"uid={uid},{_department_dn(department)}"
        company.people.append(
            Person(
                uid=uid,
                dn=dn,
                name=name,
                department=department,
                mail=f"{uid}@example.com",
                phone=f"+86 138{n:08d}",
                employee_number=f"E{n:06d}",
                disabled=disabled_every > 0 and n % disabled_every == disabled_every - 1,
            )
        )
    # Managers: the first person placed in each department manages it.
    for person in company.people:
        company.managers.setdefault(person.department, person.uid)

    dn_of = {p.uid: p.dn for p in company.people}
    dept_entries = []
    for path in paths:
        attrs: dict[str, list[str]] = {
            "objectClass": ["organizationalUnit"],
            "ou": [path.rsplit("/", 1)[1]],
        }
        manager = company.managers.get(path)
        if manager is not None:
            attrs["objectClass"].append("extensibleObject")
            attrs["manager"] = [dn_of[manager]]
        dept_entries.append(ldif_entry(_department_dn(path), attrs))

    user_entries = []
    for person in company.people:
        attrs = {
            "objectClass": ["inetOrgPerson"],
            "uid": [person.uid],
            "cn": [person.name],
            "sn": [person.name[0]],
            "givenName": [person.name[1:]],
            "displayName": [person.name],
            "mail": [person.mail],
            "telephoneNumber": [person.phone],
            "employeeNumber": [person.employee_number],
            "userPassword": [password_value],
        }
        if person.disabled:
            attrs["pwdAccountLockedTime"] = ["000001010000Z"]
        user_entries.append(ldif_entry(person.dn, attrs))

    group_entries = []
    people_dns = [p.dn for p in company.people]
    names = [f"g{n:05d}" for n in range(groups)]
    for n, cn in enumerate(names):
        size = members_per_group + (n % 11) - 5 if members_per_group else 3 + (n % 5)
        members = rng.sample(people_dns, k=min(len(people_dns), max(1, size)))
        # Every fourth group nests the next one, so effective membership needs resolution.
        if n % 4 == 0 and n + 1 < len(names):
            members.append(f"cn={names[n + 1]},{GROUPS_BASE}")
        company.groups[cn] = members
        group_entries.append(
            ldif_entry(
                f"cn={cn},{GROUPS_BASE}",
                {
                    "objectClass": ["groupOfNames"],
                    "cn": [cn],
                    "description": [f"项目组 {cn}"],
                    "member": members,
                },
            )
        )
    company.ldif = "".join(base_entries + dept_entries + user_entries + group_entries)
    return company


def effective_members(company: Company, cn: str) -> set[str]:
    """The uids in group `cn`, nested groups included (what idhub should store)."""
    seen: set[str] = set()
    uids: set[str] = set()
    stack = [cn]
    by_dn = {p.dn: p.uid for p in company.people}
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for member in company.groups.get(current, []):
            if member in by_dn:
                uids.add(by_dn[member])
            elif member.startswith("cn="):
                stack.append(member.split(",", 1)[0][3:])
    return uids


# ------------------------------------------------------------------ TLS material


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idhub test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key"
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


# ------------------------------------------------------------------ the server


class Slapd:
    """One slapd process over a temp directory. Load LDIF before `start()`."""

    def __init__(
        self, workdir: Path, *, tls: bool = True, map_size: int = 1 << 30, memberof: bool = False
    ) -> None:
        self.memberof = memberof
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data = workdir / "data"
        self.conf = workdir / "slapd.conf"
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.tls: TlsFiles | None = make_tls(workdir) if tls else None
        self.map_size = map_size
        self.process: subprocess.Popen[bytes] | None = None
        self.data.mkdir(parents=True, exist_ok=True)
        self._write_conf()

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        assert self.tls_port is not None
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def _write_conf(self) -> None:
        lines = [f"include /etc/ldap/schema/{name}.schema" for name in SCHEMAS]
        lines += [
            "modulepath /usr/lib/ldap",
            "moduleload back_mdb",
            "moduleload refint",
            "moduleload memberof",
            # ppolicy brings pwdAccountLockedTime, the usual "account disabled" mark in OpenLDAP.
            "moduleload ppolicy",
            f"pidfile {self.workdir / 'slapd.pid'}",
            f"argsfile {self.workdir / 'slapd.args'}",
            # Sign-in binds and sync searches are all this test directory does; keep the log quiet.
            "loglevel none",
        ]
        if self.tls is not None:
            lines += [
                f"TLSCACertificateFile {self.tls.ca}",
                f"TLSCertificateFile {self.tls.cert}",
                f"TLSCertificateKeyFile {self.tls.key}",
            ]
        lines += [
            "database mdb",
            f'suffix "{SUFFIX}"',
            f'rootdn "{ADMIN_DN}"',
            f"rootpw {ADMIN_PASSWORD}",
            f"directory {self.data}",
            f"maxsize {self.map_size}",
            "index objectClass eq",
            "index entryUUID eq",
            "index uid,cn eq",
            "index member eq",
            "index modifyTimestamp eq",
            # The sync account reads everything with no size cap; `limited` gets 20 entries per
            # paged search so tests can see a truncated result.
            f'limits dn.exact="{SERVICE_DN}" size=unlimited size.prtotal=unlimited time=unlimited',
            f'limits dn.exact="{LIMITED_DN}" size.soft=20 size.hard=20 size.prtotal=20',
            "access to attrs=userPassword by self =xw by anonymous auth by * none",
            "access to * by * read",
            # memberOf on users, kept by the server for groups changed over LDAP (not slapadd).
            *(["overlay memberof"] if self.memberof else []),
            "overlay refint",
            "refint_attributes member manager",
        ]
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def slapadd(self, ldif: str) -> None:
        """Bulk-loads entries offline (slapd must be stopped). `-q` skips per-entry checks."""
        assert self.process is None, "slapadd needs slapd stopped"
        path = self.workdir / "load.ldif"
        path.write_text(ldif, encoding="utf-8")
        result = subprocess.run(
            [SLAPADD, "-q", "-f", str(self.conf), "-l", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        path.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"slapadd failed: {result.stderr.strip()[-2000:]}")

    def start(self, timeout: float = 20.0) -> None:
        urls = self.url
        if self.tls_port is not None:
            urls += f" {self.ldaps_url}"
        self.process = subprocess.Popen(
            [SLAPD, "-f", str(self.conf), "-h", urls, "-d", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                self.process = None
                raise RuntimeError(f"slapd exited: {err[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("slapd did not start listening")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def admin(self):  # type: ignore[no-untyped-def]
        """An ldap3 connection bound as the directory manager, for tests that edit entries."""
        import ldap3

        server = ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE, connect_timeout=5)
        return ldap3.Connection(
            server,
            ADMIN_DN,
            ADMIN_PASSWORD,
            auto_bind=True,
            receive_timeout=30,
            raise_exceptions=True,
        )


def started(workdir: Path, ldif: str, *, tls: bool = True) -> Iterator[Slapd]:
    """Generator form for fixtures: load, start, yield, tear down."""
    server = Slapd(workdir, tls=tls)
    try:
        server.slapadd(ldif)
        server.start()
        yield server
    finally:
        server.destroy()


def source_toml(server: Slapd, *, name: str = "corp", extra: str = "") -> str:
    """An `[directory.ldap.<name>]` table for `server`; the password comes from the env var
    `LDAP_BIND_PASSWORD` (see `SOURCE_ENV`)."""
    return (
        f"[directory.ldap.{name}]\n"
        f'url = "{server.url}"\n'
        f'bind_dn = "{SERVICE_DN}"\n'
        'bind_password_env = "LDAP_BIND_PASSWORD"\n'
        f'user_base = "{PEOPLE_BASE}"\n'
        f'group_base = "{GROUPS_BASE}"\n'
        "page_size = 25\n"
        "connect_timeout = 2\n"
        "timeout = 10\n"
        # Same host, same clock: no need to wait before moving the high-water mark.
        "clock_skew = 0\n"
        f"{extra}\n"
    )


SOURCE_ENV = {"LDAP_BIND_PASSWORD": SERVICE_PASSWORD}


def main() -> None:
    """`python -m tests.slapd [DIR]`: the generated company on a free port until Ctrl-C, for
    trying directory sync by hand (docs/tutorial.md)."""
    import sys
    import tempfile

    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="slapd-"))
    company = company_ldif()
    server = Slapd(workdir, tls=False)
    server.slapadd(company.ldif)
    server.start()
    managers = ", ".join(f"{path}: {uid}" for path, uid in sorted(company.managers.items())[:5])
    print(f"slapd serving {SUFFIX} at {server.url} (data in {workdir})")
    print(f"service account {SERVICE_DN}, password {SERVICE_PASSWORD}")
    print(f"{len(company.people)} people, password {USER_PASSWORD}; managers: {managers}, ...")
    print("\n" + source_toml(server), flush=True)
    try:
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
