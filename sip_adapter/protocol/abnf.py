"""RFC 3261 section 25 grammar pieces, as regular expressions.

Each piece quotes the ABNF it implements. The patterns run on header values *after* the parser
has unfolded continuation lines (`LWS` then never contains CRLF) and stripped the value, so
`LWS` becomes `1*WSP` and `SWS` becomes `*WSP` here.

Hostile input must not make these patterns slow: every repetition whose body could overlap
with what follows is possessive (`*+`, `++`, Python 3.11) so the engine never backtracks into
it, and alternatives start with disjoint characters. The one non-possessive repetition, the
`domainlabel "."` loop of `hostname`, backtracks one whole label at a time (linear). Where
the ABNF repeats a single character drawn from a set or an escape, `(?:[set]|escape)*` is
written `(?:[set]++|escape)*+`: the same language, matched a run at a time rather than a
character at a time (about ten times faster on an 8 KB user part).

Text is `str`: the parser decodes the header section as UTF-8 with errors="surrogateescape",
so invalid bytes appear as lone surrogates U+DC80..U+DCFF, which `UTF8-NONASCII` accepts.
"""

from __future__ import annotations

import re

# --- 25.1 Basic rules -------------------------------------------------------------------------

#   alphanum  =  ALPHA / DIGIT
#   unreserved  =  alphanum / mark
#   mark        =  "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
#   (character-class bodies, for composing classes below)
_ALPHANUM = "A-Za-z0-9"
_UNRESERVED = _ALPHANUM + r"\-_.!~*'()"

#   escaped     =  "%" HEXDIG HEXDIG
escaped = r"%[0-9A-Fa-f]{2}"

#   LWS  =  [*WSP CRLF] 1*WSP ; linear whitespace
#   SWS  =  [LWS] ; sep whitespace
LWS = r"[ \t]++"
SWS = r"[ \t]*+"

#   SLASH   =  SWS "/" SWS ; slash
#   EQUAL   =  SWS "=" SWS ; equal
#   SEMI    =  SWS ";" SWS ; semicolon
#   COLON   =  SWS ":" SWS ; colon
SLASH = SWS + "/" + SWS
EQUAL = SWS + "=" + SWS
SEMI = SWS + ";" + SWS
COLON = SWS + ":" + SWS

#   token       =  1*(alphanum / "-" / "." / "!" / "%" / "*"
#                  / "_" / "+" / "`" / "'" / "~" )
token = r"[A-Za-z0-9\-.!%*_+`'~]++"

#   word        =  1*(alphanum / "-" / "." / "!" / "%" / "*" /
#                  "_" / "+" / "`" / "'" / "~" /
#                  "(" / ")" / "<" / ">" /
#                  ":" / "\" / DQUOTE /
#                  "/" / "[" / "]" / "?" /
#                  "{" / "}" )
word = r"""[A-Za-z0-9\-.!%*_+`'~()<>:\\"/\[\]?{}]++"""

#   quoted-string  =  SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
#   qdtext         =  LWS / %x21 / %x23-5B / %x5D-7E
#                       / UTF8-NONASCII
#   quoted-pair    =  "\" (%x00-09 / %x0B-0C / %x0E-7F)
#   (UTF8-NONASCII is taken as any non-ASCII character, including the surrogates that stand
#   for undecodable bytes.)
quoted_string = (
    r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]++|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*+"'
)

# --- Hosts ------------------------------------------------------------------------------------

#   host             =  hostname / IPv4address / IPv6reference
#   hostname         =  *( domainlabel "." ) toplabel [ "." ]
#   domainlabel      =  alphanum
#                       / alphanum *( alphanum / "-" ) alphanum
#   toplabel         =  ALPHA / ALPHA *( alphanum / "-" ) alphanum
#   IPv4address    =  1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
#   IPv6reference  =  "[" IPv6address "]"
#   (IPv6address is matched loosely here and checked with the ipaddress module afterwards.)
domainlabel = r"[A-Za-z0-9]++(?:-++[A-Za-z0-9]++)*+"
toplabel = r"[A-Za-z][A-Za-z0-9]*+(?:-++[A-Za-z0-9]++)*+"
hostname = rf"(?:{domainlabel}\.)*{toplabel}\.?"
IPv4address = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
IPv6reference = r"\[[0-9A-Fa-f:.]++\]"
host = rf"(?:{IPv6reference}|{hostname}|{IPv4address})"

#   port           =  1*DIGIT
port = r"[0-9]++"

# --- 25.1 URIs --------------------------------------------------------------------------------

#   SIP-URI          =  "sip:" [ userinfo ] hostport
#                       uri-parameters [ headers ]
#   SIPS-URI         =  "sips:" [ userinfo ] hostport
#                       uri-parameters [ headers ]
#   userinfo         =  ( user / telephone-subscriber ) [ ":" password ] "@"
#   user             =  1*( unreserved / escaped / user-unreserved )
#   user-unreserved  =  "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
#   password         =  *( unreserved / escaped /
#                       "&" / "=" / "+" / "$" / "," )
#   hostport         =  host [ ":" port ]
#   (telephone-subscriber's characters are all user characters, so `user` covers it.)
user = rf"(?:[{_UNRESERVED}&=+$,;?/]++|{escaped})++"
password = rf"(?:[{_UNRESERVED}&=+$,]++|{escaped})*+"

#   uri-parameters    =  *( ";" uri-parameter)
#   uri-parameter     =  transport-param / user-param / method-param
#                        / ttl-param / maddr-param / lr-param / other-param
#   other-param       =  pname [ "=" pvalue ]
#   pname             =  1*paramchar
#   pvalue            =  1*paramchar
#   paramchar         =  param-unreserved / unreserved / escaped
#   param-unreserved  =  "[" / "]" / "/" / ":" / "&" / "+" / "$"
#   (the named parameters are all special cases of other-param)
#   (paramchars is 1*paramchar)
paramchars = rf"(?:[{_UNRESERVED}\[\]/:&+$]++|{escaped})++"
uri_parameter = rf"{paramchars}(?:={paramchars})?"

#   headers         =  "?" header *( "&" header )
#   header          =  hname "=" hvalue
#   hname           =  1*( hnv-unreserved / unreserved / escaped )
#   hvalue          =  *( hnv-unreserved / unreserved / escaped )
#   hnv-unreserved  =  "[" / "]" / "/" / "?" / ":" / "+" / "$"
_hnvchars = rf"(?:[{_UNRESERVED}\[\]/?:+$]++|{escaped})"
uri_header = rf"{_hnvchars}++={_hnvchars}*+"

SIP_URI = (
    r"(?P<scheme>[Ss][Ii][Pp][Ss]?):"
    rf"(?:(?P<user>{user})(?::(?P<password>{password}))?@)?"
    rf"(?P<host>{host})(?::(?P<port>{port}))?"
    rf"(?P<params>(?:;{uri_parameter})*+)"
    rf"(?:\?(?P<headers>{uri_header}(?:&{uri_header})*+))?"
)

#   absoluteURI    =  scheme ":" ( hier-part / opaque-part )
#   hier-part      =  ( net-path / abs-path ) [ "?" query ]
#   opaque-part    =  uric-no-slash *uric
#   uric           =  reserved / unreserved / escaped
#   reserved    =  ";" / "/" / "?" / ":" / "@" / "&" / "=" / "+" / "$" / ","
#   scheme         =  ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
#   (every character of hier-part and opaque-part is a uric, so "scheme ':' 1*uric" is the same
#   language; "[" and "]" are admitted for RFC 2732 IPv6 literals.)
scheme = r"[A-Za-z][A-Za-z0-9+\-.]*+"
absoluteURI = rf"(?P<scheme>{scheme}):(?P<rest>(?:[{_UNRESERVED};/?:@&=+$,\[\]]++|{escaped})++)"

# --- 25.1 Start lines -------------------------------------------------------------------------

#   Method            =  INVITEm / ACKm / OPTIONSm / BYEm
#                        / CANCELm / REGISTERm
#                        / extension-method
#   extension-method  =  token
Method = token

#   SIP-Version    =  "SIP" "/" 1*DIGIT "." 1*DIGIT
#   (ABNF literals are case-insensitive)
SIP_Version = r"[Ss][Ii][Pp]/[0-9]++\.[0-9]++"

#   Status-Code     =  Informational / Redirection / Success / Client-Error
#                      / Server-Error / Global-Failure / extension-code
#   extension-code  =  3DIGIT
Status_Code = r"[1-6][0-9][0-9]"

#   Reason-Phrase   =  *(reserved / unreserved / escaped
#                      / UTF8-NONASCII / UTF8-CONT / SP / HTAB)
#   (taken as: anything but control characters other than HTAB)
Reason_Phrase = r"[^\x00-\x08\x0a-\x1f\x7f]*+"

# --- 25.1 Header fields -----------------------------------------------------------------------

#   header-name       =  token
header_name = token

#   generic-param  =  token [ EQUAL gen-value ]
#   gen-value      =  token / host / quoted-string
#   (host's characters are token characters, except an IPv6reference's)
gen_value = rf"(?:{token}|{IPv6reference}|{quoted_string})"
generic_params = rf"(?:{SEMI}{token}(?:{EQUAL}{gen_value})?)*+"

#   Via               =  ( "Via" / "v" ) HCOLON via-parm *(COMMA via-parm)
#   via-parm          =  sent-protocol LWS sent-by *( SEMI via-params )
#   via-params        =  via-ttl / via-maddr
#                        / via-received / via-branch
#                        / via-extension
#   via-extension     =  generic-param
#   sent-protocol     =  protocol-name SLASH protocol-version
#                        SLASH transport
#   protocol-name     =  "SIP" / token
#   protocol-version  =  token
#   transport         =  "UDP" / "TCP" / "TLS" / "SCTP"
#                        / other-transport
#   sent-by           =  host [ COLON port ]
#   via-received      =  "received" EQUAL (IPv4address / IPv6address)
#   (via-ttl, via-maddr, via-received, via-branch and RFC 3581's "rport" [EQUAL 1*DIGIT]
#   are special cases of generic-param; their values are checked where they are used.
#   Unlike a generic-param's host, via-received's IPv6address has no brackets (RFC 5118
#   section 4.5), so a Via parameter's value may also be a bare IPv6 address: matched
#   loosely, as one with a colon, before token, which stops at the colon.)
IPv6address_loose = r"[0-9A-Fa-f.]*+:[0-9A-Fa-f:.]*+"
via_gen_value = rf"(?:{IPv6address_loose}|{token}|{IPv6reference}|{quoted_string})"
via_generic_params = rf"(?:{SEMI}{token}(?:{EQUAL}{via_gen_value})?)*+"
via_parm = (
    rf"(?P<protocol>{token}){SLASH}(?P<version>{token}){SLASH}(?P<transport>{token})"
    rf"{LWS}(?P<host>{host})(?:{COLON}(?P<port>{port}))?"
    rf"(?P<params>{via_generic_params})"
)

#   name-addr      =  [ display-name ] LAQUOT addr-spec RAQUOT
#   addr-spec      =  SIP-URI / SIPS-URI / absoluteURI
#   display-name   =  *(token LWS)/ quoted-string
#   LAQUOT  =  SWS "<"; left angle quote
#   RAQUOT  =  ">" SWS; right angle quote
#   from-spec    =  ( name-addr / addr-spec ) *( SEMI from-param )
#   contact-param  =  (name-addr / addr-spec) *(SEMI contact-params)
#   (RFC 4475 3.1.1.6: accept a token display name with no LWS before "<". Outside angle
#   brackets the URI stops at ";" and may not contain "," or "?", RFC 3261 20.10; the URI text
#   is matched loosely here and checked with the URI grammar afterwards.)
name_addr_or_spec = (
    rf"(?:(?:(?P<quoted>{quoted_string})|(?P<tokens>{token}(?:{LWS}{token})*+))?"
    rf"{SWS}<(?P<uri>[^<>\s\"]++)>"
    rf"|(?P<bare>[^\s;,?<>\"]++))"
    rf"(?P<params>{generic_params})"
)

#   CSeq  =  "CSeq" HCOLON 1*DIGIT LWS Method
CSeq = rf"(?P<number>[0-9]++){LWS}(?P<method>{Method})"

#   Call-ID  =  ( "Call-ID" / "i" ) HCOLON callid
#   callid   =  word [ "@" word ]
callid = rf"{word}(?:@{word})?"

#   Max-Forwards  =  "Max-Forwards" HCOLON 1*DIGIT
#   Content-Length  =  ( "Content-Length" / "l" ) HCOLON 1*DIGIT
#   Expires     =  "Expires" HCOLON delta-seconds
#   Min-Expires  =  "Min-Expires" HCOLON delta-seconds
#   delta-seconds      =  1*DIGIT
#   (DIGIT is %x30-39 only: Python's \d and str.isdigit() also take "²", "١٢٣" and "１２３",
#   which int() then refuses or, worse, reads as 123. Every number in a header goes through
#   DIGITS_RE or the functions at the end of this module: parse_digits, delta_seconds,
#   bounded_int.)
digits = r"[0-9]++"

#   Content-Type     =  ( "Content-Type" / "c" ) HCOLON media-type
#   media-type       =  m-type SLASH m-subtype *(SEMI m-parameter)
#   m-parameter      =  m-attribute EQUAL m-value
#   m-attribute      =  token
#   m-value          =  token / quoted-string
#   (m-type and m-subtype are tokens or extension tokens, which are tokens)
media_type = (
    rf"(?P<type>{token}){SLASH}(?P<subtype>{token})"
    rf"(?P<params>(?:{SEMI}{token}{EQUAL}(?:{token}|{quoted_string}))*+)"
)

#   Date          =  "Date" HCOLON SIP-date
#   SIP-date      =  rfc1123-date
#   rfc1123-date  =  wkday "," SP date1 SP time SP "GMT"
#   date1         =  2DIGIT SP month SP 4DIGIT
#   time          =  2DIGIT ":" 2DIGIT ":" 2DIGIT
rfc1123_date = (
    r"(?i:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?i:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} (?i:GMT)"
)


# --- 7.3.1 Lists ------------------------------------------------------------------------------

#   A header field whose grammar is  element *(COMMA element)  may also be written as several
#   lines; COMMA  =  SWS "," SWS.
#   A comma separates elements only outside a quoted-string (where a backslash escapes the
#   next character) and outside "<" ... ">" (a URI may contain commas). An unterminated
#   quoted-string or "<" runs to the end of the value: the element is then malformed, which
#   its own grammar reports.
#   One element, as a regular expression that never backtracks (each alternative starts with
#   a character the others exclude, every repetition is possessive): the list is split with
#   one findall, in C, instead of a Python loop per character.
list_element = r'''(?:[^",<]++|"(?:[^"\\]++|\\.?)*+"?|<[^>]*+>?)*+'''
#   The parts of a value in which a comma is not a separator.
_quoted_or_angled = r'''"(?:[^"\\]++|\\.?)*+"?|<[^>]*+>?'''


# --- Compiled (the callers use fullmatch unless noted) ---------------------------------------

TOKEN_RE = re.compile(token)
METHOD_RE = re.compile(Method)
HEADER_NAME_RE = re.compile(header_name)
SIP_VERSION_RE = re.compile(SIP_Version)
STATUS_CODE_RE = re.compile(Status_Code)
REASON_PHRASE_RE = re.compile(Reason_Phrase)
SIP_URI_RE = re.compile(SIP_URI)
ABSOLUTE_URI_RE = re.compile(absoluteURI)
SCHEME_PREFIX_RE = re.compile(rf"({scheme}):")  # match
URI_PARAM_RE = re.compile(rf";({paramchars})(?:=({paramchars}))?")  # finditer
VIA_PARM_RE = re.compile(via_parm)
NAME_ADDR_RE = re.compile(name_addr_or_spec)
GENERIC_PARAM_RE = re.compile(rf"{SEMI}({token})(?:{EQUAL}({gen_value}))?")  # findall
VIA_PARAM_RE = re.compile(rf"{SEMI}({token})(?:{EQUAL}({via_gen_value}))?")  # findall
CSEQ_RE = re.compile(CSeq)
CALLID_RE = re.compile(callid)
DIGITS_RE = re.compile(digits)
MEDIA_TYPE_RE = re.compile(media_type)
DATE_RE = re.compile(rfc1123_date)
QUOTED_PAIR_RE = re.compile(r"\\([\x00-\x7f])")  # sub: unescape a quoted-string's content
# findall: (element, "," or "" at the end) pairs; see split_list in message.py
LIST_ELEMENT_RE = re.compile(rf"({list_element})(,|\Z)", re.S)
QUOTED_OR_ANGLED_RE = re.compile(_quoted_or_angled, re.S)  # sub: drop them to count commas
# match at a position: one element and the comma after it
LIST_ELEMENT_COMMA_RE = re.compile(rf"{list_element},", re.S)


def bounded_int(digits: str, maximum: int) -> int | None:
    """int(digits) when it is <= maximum, else None: also for absurdly long digit strings,
    which int() would refuse beyond 4300 digits, after spending time on them.

    `digits` must already match DIGITS_RE (ASCII 0-9 only)."""
    if len(digits) < 10:
        value = int(digits)
        return value if value <= maximum else None
    stripped = digits.lstrip("0")
    if len(stripped) > len(str(maximum)):
        return None
    value = int(stripped) if stripped else 0
    return value if value <= maximum else None


def parse_digits(text: str, maximum: int) -> int | None:
    """`1*DIGIT` (ASCII only) read as an int <= maximum; None when the text is not 1*DIGIT
    or the number is larger (the caller decides whether that is an error or a clamp: see
    delta_seconds).

    `text.isascii() and text.isdigit()` is DIGITS_RE.fullmatch, faster: on an ASCII string
    str.isdigit() accepts 0-9 and nothing else; its other digits ("²", "١", "１") are what
    isascii() rules out."""
    if not (text.isascii() and text.isdigit()):
        return None
    return bounded_int(text, maximum)


UINT32_MAX = 2**32 - 1


def delta_seconds(text: str) -> int | None:
    """delta-seconds (Expires, Min-Expires): ASCII digits, any length; values above 2**32-1
    read as 2**32-1 (RFC 3261 section 20.19 bounds the value by 2**32-1; a longer one is
    taken at that bound rather than refused). None when the text is not 1*DIGIT."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) < 10:
        return int(text)
    number = bounded_int(text, UINT32_MAX)
    return UINT32_MAX if number is None else number
