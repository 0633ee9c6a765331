#!/usr/bin/env python3
"""Writes pii_corpus.jsonl: the labelled corpus tests/engine/pii_test.cpp measures the masker on.

Every line is {"text": ..., "spans": [[type, substring], ...]} with spans in order of appearance;
type is phone, id_card, bank_card, email, ipv4, ipv6 or custom:<name>. Lines without spans are
negatives. The sentences are written here by hand; the values in them are generated with the
checksums implemented below from their published definitions (ISO 7064 MOD 11-2 for resident IDs,
Luhn for cards), independently of the C++ code, and IPv6 forms come from Python's ipaddress.

Labelling rules (the same ones engine/privacy/pii.hpp documents):
- a phone span includes its +86 / 0086 / 86 / (+86) prefix and the separators;
- a number glued to letters or digits, or continued by '.'/'-' and a digit, is not a finding;
- an 18-digit number that fails its check digit or has an impossible birth date is not an ID, and
  the negatives are also made Luhn-invalid so that they are not bank cards either;
- a 16-19 digit number is a card only when Luhn-valid.

Run: python3 tests/data/make_pii_corpus.py > tests/data/pii_corpus.jsonl   (deterministic)
"""

import ipaddress
import json
import random
import sys

rng = random.Random(20240611)

# ---- checksums -----------------------------------------------------------------------------------

ID_WEIGHTS = [2 ** (17 - i) % 11 for i in range(17)]  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2


def id_check(first17):
    s = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS))
    # The check value c satisfies (s + c) % 11 == 1; c == 10 is written X.
    c = (12 - s % 11) % 11
    return "X" if c == 10 else str(c)


def luhn_ok(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return total % 10 == 0


def luhn_complete(partial):
    for d in "0123456789":
        if luhn_ok(partial + d):
            return partial + d
    raise AssertionError


PROVINCES = {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
             50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83}


def real_date(y, m, d):
    if not 1 <= m <= 12 or d < 1:
        return False
    days = [31, 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28, 31, 30, 31, 30, 31,
            31, 30, 31, 30, 31][m - 1]
    return d <= days


def is_id(s):
    """The corpus's own notion of a valid ID, used only to keep negatives negative."""
    if len(s) == 18 and s[:17].isdigit():
        return (int(s[:2]) in PROVINCES and 1900 <= int(s[6:10]) <= 2099
                and real_date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
                and id_check(s[:17]) == s[17].upper())
    if len(s) == 15 and s.isdigit():
        return int(s[:2]) in PROVINCES and real_date(1900 + int(s[6:8]), int(s[8:10]), int(s[10:12]))
    return False


# ---- value generators ----------------------------------------------------------------------------

REGIONS = ["110101", "110105", "120103", "130102", "140105", "150102", "210102", "220104", "230103",
           "310104", "310115", "320102", "320583", "330106", "330482", "340104", "350203", "360102",
           "370202", "410105", "420106", "430104", "440305", "440106", "450103", "460105", "500103",
           "510107", "520102", "530102", "540102", "610113", "620102", "630104", "640104", "650102"]


def rdigits(n):
    return "".join(rng.choice("0123456789") for _ in range(n))


def rdate(lo=1940, hi=2015):
    while True:
        y, m, d = rng.randint(lo, hi), rng.randint(1, 12), rng.randint(1, 31)
        if real_date(y, m, d):
            return y, m, d


def id18(want_x=None):
    while True:
        y, m, d = rdate()
        first17 = f"{rng.choice(REGIONS)}{y:04d}{m:02d}{d:02d}{rdigits(3)}"
        c = id_check(first17)
        if want_x is None or (c == "X") == want_x:
            return first17 + c


def id15():
    y, m, d = rdate(1930, 1999)
    return f"{rng.choice(REGIONS)}{y % 100:02d}{m:02d}{d:02d}{rdigits(3)}"


def phone_digits():
    return "1" + rng.choice("3456789") + rdigits(9)


CARD_PREFIXES = ["622202", "621700", "622848", "621483", "622588", "622700", "621226", "625965",
                 "4", "4", "51", "53", "55", "35", "62"]


def card(length):
    while True:
        p = rng.choice(CARD_PREFIXES)
        v = luhn_complete(p + rdigits(length - len(p) - 1))
        if not is_id(v) and len(set(v)) > 1:
            return v


def groups(s, sep, size=4):
    return sep.join(s[i:i + size] for i in range(0, len(s), size))


FW_MAP = {c: chr(ord(c) + 0xFEE0) for c in "0123456789+-@.()xX"}


def fullwidth(s, space="\u3000"):
    return "".join(FW_MAP.get(c, space if c == " " else c) for c in s)


def phone_forms(p):
    return [
        p,
        f"{p[:3]} {p[3:7]} {p[7:]}",
        f"{p[:3]}-{p[3:7]}-{p[7:]}",
        f"{p[:3]}.{p[3:7]}.{p[7:]}",
        f"+86 {p}",
        f"+86{p}",
        f"+86-{p[:3]}-{p[3:7]}-{p[7:]}",
        f"+86 {p[:3]} {p[3:7]} {p[7:]}",
        f"0086 {p}",
        f"0086-{p}",
        f"86-{p}",
        f"(+86) {p}",
        f"(86){p}",
        fullwidth(p),
        fullwidth(f"+86 {p[:3]} {p[3:7]} {p[7:]}"),
        fullwidth(f"{p[:3]}-{p[3:7]}-{p[7:]}"),
    ]


NAMES = ["zhangsan", "li.si", "wang_wu", "chen.xiaoming", "liu+news", "john.smith", "alice", "bob.lee",
         "m.garcia", "ops-team", "hr2023", "zhao.lei88", "sun_li", "tom", "support", "k.tanaka"]
DOMAINS = ["example.com", "example.cn", "mail.example.org", "corp.example.com.cn", "qq.com",
           "163.com", "126.com", "sina.cn", "company.io", "uni.edu.cn", "foxmail.com", "gmail.com",
           "outlook.com", "example.co.uk"]


def email():
    return rng.choice(NAMES) + "@" + rng.choice(DOMAINS)


def ipv4():
    kind = rng.random()
    if kind < 0.3:
        return f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind < 0.5:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return ".".join(str(rng.randint(0, 255)) for _ in range(4))


def ipv6():
    kind = rng.random()
    words = [rng.randint(0, 0xFFFF) for _ in range(8)]
    if kind < 0.35:  # a zero run to compress
        start = rng.randint(1, 5)
        for i in range(start, start + rng.randint(2, 3)):
            words[i] = 0
    if kind < 0.15:
        words[0] = 0x2001
        words[1] = 0x0DB8
    a = ipaddress.IPv6Address(b"".join(w.to_bytes(2, "big") for w in words))
    form = rng.random()
    if form < 0.5:
        return a.compressed
    if form < 0.7:
        return a.exploded
    if form < 0.85:
        return a.compressed.upper()
    return ":".join(f"{w:x}" for w in words)  # full, no leading zeros


# ---- negatives -----------------------------------------------------------------------------------


def plain_number(n, first="123456789"):
    """A number of n digits that is none of our types (not Luhn, not an ID, not a phone)."""
    while True:
        s = rng.choice(first) + rdigits(n - 1)
        if luhn_ok(s) or is_id(s) or (n == 11 and s[0] == "1" and s[1] in "3456789"):
            continue
        return s


def bad_check_id():
    v = id18()
    while True:
        wrong = v[:17] + rng.choice("0123456789X".replace(v[17], ""))
        if wrong[17] == "X" or not luhn_ok(wrong):  # a Luhn-valid one would be a card
            return wrong


def bad_date_id():
    while True:
        y = rng.randint(1950, 2010)
        m, d = rng.choice([(13, 1), (0, 12), (2, 30), (4, 31), (2, 29), (11, 31), (6, 0)])
        if m == 2 and d == 29 and real_date(y, 2, 29):
            continue
        first17 = f"{rng.choice(REGIONS)}{y:04d}{m:02d}{d:02d}{rdigits(3)}"
        v = first17 + id_check(first17)
        if "X" in v or not luhn_ok(v):
            return v


def bad_luhn(n):
    while True:
        p = rng.choice(CARD_PREFIXES)
        v = p + rdigits(n - len(p))
        if not luhn_ok(v) and not is_id(v):
            return v


# ---- sentences -----------------------------------------------------------------------------------

out = []


def line(text, *spans, hard=False):
    pos = 0
    for t, s in spans:  # every span must be findable in order
        i = text.find(s, pos)
        assert i >= 0, (text, s)
        pos = i + len(s)
    rec = {"text": text, "spans": [[t, s] for t, s in spans]}
    if hard:
        rec["hard"] = True
    out.append(rec)


PHONE_ZH = ["请拨打{}联系我。", "我的手机号是{}，有事打给我。", "客户电话：{}", "联系人：王先生，电话 {}",
            "紧急联系人手机号码{}（24小时开机）", "收货人 李女士 {} 北京市朝阳区", "手机{}",
            "如有疑问请致电{}，谢谢！", "【快递】您的包裹已到，取件请联系{}。", "家长电话:{}；学生姓名：张小明"]
PHONE_EN = ["Call me at {} after 6pm.", "Phone: {}", "You can reach Ms. Li on {} or by email.",
            "My number is {}.", "Contact (mobile): {}", "Driver's phone {} - please call on arrival",
            "tel:{}", "Please text {} with the code."]

for i in range(80):
    p = phone_digits()
    form = phone_forms(p)[i % 16]
    frame = (PHONE_ZH if i % 2 == 0 else PHONE_EN)[i // 2 % (10 if i % 2 == 0 else 8)]
    line(frame.format(form), ("phone", form))

ID_ZH = ["身份证号：{}", "本人身份证号码{}，请核对。", "乘机人 张伟 证件号 {}", "公民身份号码 {} 已登记",
         "开户人身份证{}，有效期至2030年。", "请上传身份证（{}）正反面照片", "住客证件号码:{}"]
ID_EN = ["ID number: {}", "Resident ID {} was verified.", "Passenger ID card: {}",
         "Her PRC ID is {}, issued in Beijing."]

for i in range(70):
    if i % 7 == 0:
        v = id15()
    elif i % 7 == 1:
        v = id18(want_x=True)
    elif i % 7 == 2:
        v = id18(want_x=True).replace("X", "x")
    else:
        v = id18()
    form = v
    if i % 10 == 3 and len(v) == 18:
        form = f"{v[:6]} {v[6:14]} {v[14:]}"
    elif i % 10 == 5 and len(v) == 18:
        form = f"{v[:6]}-{v[6:14]}-{v[14:]}"
    elif i % 10 == 8:
        form = fullwidth(v)
    frame = (ID_ZH if i % 2 == 0 else ID_EN)[i // 2 % (7 if i % 2 == 0 else 4)]
    line(frame.format(form), ("id_card", form))

CARD_ZH = ["请将款项转至卡号{}。", "银行卡：{}（工商银行）", "退款将原路退回尾号卡 {}", "储蓄卡号 {} 户名 王芳",
           "信用卡{}已冻结", "收款账户：{}，开户行：招商银行上海分行"]
CARD_EN = ["Card number: {}", "Please charge {} for the order.", "Refund to card {} within 7 days.",
           "Debit card {} (exp 08/27)", "Pay to {} please."]

for i in range(64):
    length = [16, 16, 16, 19, 19, 18, 17, 16][i % 8]
    v = card(length)
    f = i % 5
    form = v if f in (0, 1) else groups(v, " ") if f == 2 else groups(v, "-") if f == 3 else fullwidth(v)
    frame = (CARD_ZH if i % 2 == 0 else CARD_EN)[i // 2 % (6 if i % 2 == 0 else 5)]
    line(frame.format(form), ("bank_card", form))

EMAIL_ZH = ["邮箱：{}", "请发送简历至{}，注明应聘岗位。", "联系邮箱{}", "如有问题，发邮件到 {} 即可。",
            "抄送{}和财务部"]
EMAIL_EN = ["Email me at {}.", "Contact: {}", "Send the invoice to <{}>", "from: {} (sales)",
            "mailto:{}", "Reply to {}, thanks!"]

for i in range(56):
    v = email()
    if i % 14 == 13:
        v = v.upper()
    form = v
    if i % 11 == 10:
        form = v.replace("@", "\uff20")  # full-width at sign
    frame = (EMAIL_ZH if i % 2 == 0 else EMAIL_EN)[i // 2 % (5 if i % 2 == 0 else 6)]
    line(frame.format(form), ("email", form))

IP4_ZH = ["服务器IP：{}", "登录地址 {} 异常", "来自{}的请求被拒绝。", "请把网关设置为{}，子网掩码255.255.255.0",
          "用户上次登录IP为{}，地点：杭州"]
IP4_EN = ["Server at {} is down.", "Connection from {}:8443 refused", "client_ip={} status=200",
          "Route {}/24 via eth0", "ssh admin@{}", "Last login: {}."]

for i in range(56):
    v = ipv4()
    frame = (IP4_ZH if i % 2 == 0 else IP4_EN)[i // 2 % (5 if i % 2 == 0 else 6)]
    text = frame.format(v)
    spans = [("ipv4", v)]
    if "255.255.255.0" in text:
        spans.append(("ipv4", "255.255.255.0"))
    line(text, *spans)

IP6_ZH = ["IPv6地址：{}", "来源 {} 的访问次数过多", "请将DNS设置为{}。", "节点地址[{}]:9000无法连接"]
IP6_EN = ["IPv6 address {} assigned.", "Ping {} failed", "listen [{}]:8080", "src={} dst=fe80::1 proto=tcp",
          "Peer: {}."]

for i in range(44):
    v = ipv6()
    frame = (IP6_ZH if i % 2 == 0 else IP6_EN)[i // 2 % (4 if i % 2 == 0 else 5)]
    text = frame.format(v)
    spans = [("ipv6", v)]
    if "fe80::1" in frame:
        spans.append(("ipv6", "fe80::1"))
    line(text, *spans)

# Hand-picked IPv6 forms: embedded IPv4, loopback, zone ids, prefixes, full-width colon after.
for text, v in [
    ("映射地址 ::ffff:192.0.2.128 来自旧系统", "::ffff:192.0.2.128"),
    ("NAT64 uses 64:ff9b::198.51.100.7 here", "64:ff9b::198.51.100.7"),
    ("listening on ::1 only", "::1"),
    ("link-local fe80::1ff:fe23:4567:890a%eth0 is up", "fe80::1ff:fe23:4567:890a"),
    ("前缀 2001:db8::/32 仅用于文档", "2001:db8::"),
    ("地址：2409:8a00:1a2b::3c4d：已封禁", "2409:8a00:1a2b::3c4d"),
    ("IPv6:2001:db8:85a3::8a2e:370:7334 blocked", "2001:db8:85a3::8a2e:370:7334"),
    ("old style ::192.0.2.33 compat", "::192.0.2.33"),
    ("full form 2001:0db8:0000:0000:0000:ff00:0042:8329.", "2001:0db8:0000:0000:0000:ff00:0042:8329"),
]:
    line(text, ("ipv6", v))

# Edge positives.
p1, p2 = phone_digits(), phone_digits()
line(f"13800001111@163.com 是他的邮箱", ("email", "13800001111@163.com"))
line(f"手机{p1}微信同号", ("phone", p1))
line(f"(+86){p2}", ("phone", f"(+86){p2}"))
v = id18()
line(f"身份证:{v}。", ("id_card", v))
c = card(16)
line(f"卡号【{c}】", ("bank_card", c))
line(f"“{p1}”是我的号码", ("phone", p1))

# Custom patterns (the test configures employee_id = EMP-\d{6} and plate = a Chinese plate).
PLATES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
for i in range(12):
    emp = f"EMP-{rdigits(6)}"
    plate = rng.choice(PLATES) + rng.choice("ABCDEFGHJK") + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(5))
    if i % 3 == 0:
        line(f"工号{emp}的员工车牌号为{plate}。", ("custom:employee_id", emp), ("custom:plate", plate))
    elif i % 3 == 1:
        line(f"Employee {emp} parked car {plate} in lot B.", ("custom:employee_id", emp), ("custom:plate", plate))
    else:
        line(f"车辆{plate}已登记", ("custom:plate", plate))

# Mixed lines: several items in one sentence.
for i in range(40):
    p, v, c, e, a4, a6 = phone_digits(), id18(), card(rng.choice([16, 19])), email(), ipv4(), ipv6()
    pf = rng.choice(phone_forms(p)[:13])
    k = i % 8
    if k == 0:
        line(f"客户张三，手机{pf}，身份证{v}，邮箱{e}。", ("phone", pf), ("id_card", v), ("email", e))
    elif k == 1:
        line(f"Name: Li Lei; phone {pf}; card {groups(c, ' ')}; email {e}",
             ("phone", pf), ("bank_card", groups(c, " ")), ("email", e))
    elif k == 2:
        line(f"{a4} - - [15/Nov/2023:10:30:00 +0800] \"GET /api?uid=1024 HTTP/1.1\" 200 user={e}",
             ("ipv4", a4), ("email", e))
    elif k == 3:
        line(f"订单20231115号：收货人电话{pf}，付款卡{c}，下单IP {a4}",
             ("phone", pf), ("bank_card", c), ("ipv4", a4))
    elif k == 4:
        line(f"dual-stack host {a4} / {a6}, owner {e}", ("ipv4", a4), ("ipv6", a6), ("email", e))
    elif k == 5:
        line(f"申请人身份证号{v}，联系电话{pf}，工资卡{groups(c, '-')}",
             ("id_card", v), ("phone", pf), ("bank_card", groups(c, "-")))
    elif k == 6:
        n = plain_number(19)
        line(f"Order #{n} paid with {c}; confirmation sent to {e} and {pf}.",
             ("bank_card", c), ("email", e), ("phone", pf))
    else:
        line(f"用户{e}（手机{pf}）于2023-11-15 10:30:00从{a6}登录，版本1.2.3.4.5",
             ("email", e), ("phone", pf), ("ipv6", a6))

# ---- hard negatives ------------------------------------------------------------------------------

NEG = []
for i in range(14):
    NEG.append(f"订单号：{plain_number(rng.choice([16, 17, 18, 19, 20]))}，请妥善保存。")
    NEG.append(f"Order {plain_number(rng.choice([16, 18, 19]))} shipped.")
for i in range(12):
    NEG.append(f"身份证号{bad_check_id()}校验位错误，请重新输入。")
    NEG.append(f"ID {bad_date_id()} has an impossible birth date.")
for i in range(6):
    y, m, d = rng.choice([(1990, 13, 1), (1985, 2, 30), (1977, 4, 31)])
    NEG.append(f"旧证号{rng.choice(REGIONS)}{y % 100:02d}{m:02d}{d:02d}{rdigits(3)}无效")
for i in range(12):
    n = bad_luhn(16)
    NEG.append(rng.choice([f"卡号{n}不存在", f"Card {groups(n, ' ')} was declined (invalid number).",
                           f"tracking no. {n}"]))
for i in range(10):
    NEG.append(rng.choice(["电话{}打不通", "Call {} now", "号码：{}"]).format(
        rng.choice([phone_digits()[:10], phone_digits() + rdigits(1), "12" + rdigits(9), "10" + rdigits(9)])))
NEG += [
    "座机：010-8888 6666", "客服热线 400-820-8820", "Office: 0755-12345678", "传真 021-6432 1234",
    "US office +1 312 555 0123", "Call +13125550123 for the US desk", "工单编号 138123456789012",
    "时间戳 1700000000", "timestamp_ms=1700000000123", "生成时间：20231115103000",
    "日期：2023-11-15 10:30:00", "2023年11月15日下午3点", "出生日期 1990-03-07", "生日19900307",
    "版本 1.2.3.4.5 已发布", "upgrade to v1.2.3.4 today", "host 999.1.1.1 is not an address",
    "256.100.1.1 is out of range", "subnet 192.168.1 incomplete", "pi is 3.14159265358979",
    "octets 01.02.03.04 with leading zeros", "build 10.0.0.256", "编号 2.5.29.17.1",
    "MAC 00:1A:2B:3C:4D:5E", "会议时间 12:30:45", "use std::vector<int>", "aspect 16:9, ratio 1:2:3:4",
    "group 12345::1 bad", "smiley :::", "time 10:20:30.5", "value ::", "a:b:c:d",
    "user@localhost", "@zhangsan 你好", "a@b", "name at example dot com", "邮箱：无",
    "price: ¥1,234,567.89", "金额 12345678.90 元", "合计 3,000,000 元", "数量 1000000000000000000000",
    "0000 0000 0000 0000", "SN13812345678X", "型号ABC13912345678",
    "room 1380-1234-5678-9", "今天天气很好，我们去公园散步吧。", "The quick brown fox jumps over the lazy dog.",
    "坐标 39.9042, 116.4074", "ISBN 978-7-111-54742-6", "发票代码 044031900111 发票号码 12345678",
]
for n in NEG:
    line(n)

# ---- outside the rules ---------------------------------------------------------------------------
# Written the way people write, labelled by what a reader would call PII, knowing that the rules
# above do not cover them. The test reports these separately and does not hold them to a threshold.
while True:
    luhn_order = luhn_complete("2023111500" + rdigits(7))  # an 18-digit order number that passes Luhn
    if not is_id(luhn_order):
        break
hp = phone_digits()
hv = id18()
HARD = [
    (f"电话 {hp[:3]}-{hp[3:7]} {hp[7:]}", [("phone", f"{hp[:3]}-{hp[3:7]} {hp[7:]}")]),  # mixed separators
    (f"手机 {hp[:4]} {hp[4:8]} {hp[8:]}", [("phone", f"{hp[:4]} {hp[4:8]} {hp[8:]}")]),  # 4-4-3 groups
    (f"+86 ({hp[:3]}) {hp[3:7]}-{hp[7:]}", [("phone", f"+86 ({hp[:3]}) {hp[3:7]}-{hp[7:]}")]),
    (f"call {hp[:3]} {hp[3:7]} {hp[7:]} 9am-5pm", [("phone", f"{hp[:3]} {hp[3:7]} {hp[7:]}")]),
    ("手机号：一三八一二三四五六七八", [("phone", "一三八一二三四五六七八")]),  # Chinese numerals
    (f"身份证 {hv[:6]} {hv[6:10]} {hv[10:14]} {hv[14:]}", [("id_card", f"{hv[:6]} {hv[6:10]} {hv[10:14]} {hv[14:]}")]),
    ("邮箱 张三@例子.中国", [("email", "张三@例子.中国")]),  # internationalised address
    ("contact: zhang [at] example [dot] com", [("email", "zhang [at] example [dot] com")]),
    ("version 1.2.3.4 released", []),  # a four-part version is a valid IPv4 literal
    (f"订单号 {luhn_order}", []),  # one order number in ten passes Luhn
    ("卡号 622202 1000000000009", [("bank_card", "622202 1000000000009")]),  # 6-13 grouping
    ("Tel: 138 1234 5678 / 139 8765 4321", [("phone", "138 1234 5678"), ("phone", "139 8765 4321")]),
]
for text, spans in HARD:
    line(text, *spans, hard=True)

for rec in out:
    sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")

counts = {}
for rec in out:
    for t, _ in rec["spans"]:
        counts[t] = counts.get(t, 0) + 1
print(f"{len(out)} lines ({sum(1 for r in out if r.get('hard'))} outside the rules), "
      f"{sum(1 for r in out if not r['spans'])} negatives, spans: {counts}", file=sys.stderr)
