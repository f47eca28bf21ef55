"""The pharmacy console in headless Chromium, driven by Selenium.

Scenarios (run by tests/console.rs against a real `rxgate run`; each prints one JSON line with
what it saw):
- `pharmacist`: set-up, sign-in, the fridge overview, an alert acknowledged with an electronic
  signature, sign-out, and a technician refused.
- `roles`: an admin adds an account; an installer creates an enrollment token and revokes a
  device with a signature while a technician is refused; an inspector reads and exports the
  audit trail but may change nothing; a session cookie stops working after sign-out and after
  the idle limit.
- `expired`: after the inspector's last day, their sign-in is refused.
axe-core checks every page shown (serious and critical violations are reported in the JSON).
Every wait is explicit (WebDriverWait with a deadline); only the idle-limit check sleeps.

    console.py pharmacist --base URL --anna LINK --tom LINK --shots DIR
    console.py roles --base URL --ada LINK --ines LINK --tom LINK --ivy LINK --device ID --shots DIR
    console.py expired --base URL --name NAME --code RECOVERY --shots DIR
"""

import argparse
import http.cookiejar
import importlib.resources
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

import pyotp
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                        WebDriverException)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 20  # seconds, for any one thing to appear
# While a page is replaced, its elements vanish or go stale (Chromium sometimes says so only as
# "Node with given id does not belong to the document"): look again until the deadline, which
# still fails the test with what was awaited.
LOADING = (NoSuchElementException, StaleElementReferenceException, WebDriverException)


def wait(browser, timeout=WAIT):
    return WebDriverWait(browser, timeout, poll_frequency=0.1, ignored_exceptions=LOADING)


def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("RXGATE_CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--ignore-certificate-errors", "--window-size=1200,1000", "--lang=en"):
        options.add_argument(arg)
    service = Service(os.environ.get("RXGATE_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


class Person:
    """One account's authenticator: never offers a TOTP step twice (the gateway refuses replays)."""

    def __init__(self, secret):
        self.totp = pyotp.TOTP(secret)
        self.last_step = None

    def code(self):
        """A code for the first step after the last one used that the gateway accepts (its own
        step or the next): waits for the clock when two are used within one step."""
        while True:
            now_step = int(time.time()) // 30
            step = now_step if self.last_step is None else max(now_step, self.last_step + 1)
            if step <= now_step + 1:
                self.last_step = step
                return self.totp.at(step * 30)
            time.sleep(0.5)


AXE = (importlib.resources.files("axe_core_python") / "axe.min.js").read_text()
# Serious and critical accessibility violations, by screenshot name.
VIOLATIONS = {}
PAGES_CHECKED = []


def axe(browser, name):
    """Runs axe-core on the page shown (WCAG 2.1 A/AA rules) and keeps what is serious."""
    browser.set_script_timeout(30)
    found = browser.execute_async_script(AXE + """
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})
           .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                                   nodes: v.nodes.map(n => n.target.join(' '))}))))
           .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));
    """)
    serious = [v for v in found if v["impact"] in ("serious", "critical")]
    PAGES_CHECKED.append(name)
    if serious:
        VIOLATIONS[name] = serious


def shot(browser, shots, name):
    wait(browser).until(lambda b: b.execute_script("return document.readyState") == "complete")
    browser.save_screenshot(os.path.join(shots, f"{name}.png"))
    axe(browser, name)


def heading(browser):
    return wait(browser).until(lambda b: b.find_element(By.TAG_NAME, "h1").text)


def wait_heading(browser, text):
    wait(browser).until(lambda b: b.find_element(By.TAG_NAME, "h1").text == text,
                        f"a page headed {text!r}")


def fill(browser, field, value):
    element = browser.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def set_up(browser, link, password, shots, prefix):
    browser.get(link)
    wait_heading(browser, "Set up your account")
    if prefix:
        shot(browser, shots, f"{prefix}-setup")
    person = Person(browser.find_element(By.ID, "totp-secret").text)
    assert browser.find_element(By.ID, "otpauth").get_attribute("href").startswith("otpauth://totp/")
    fill(browser, "password", password)
    fill(browser, "password2", password)
    fill(browser, "code", person.code())
    browser.find_element(By.ID, "submit").click()
    wait_heading(browser, "Your account is ready")
    if prefix:
        shot(browser, shots, f"{prefix}-recovery-codes")
    codes = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#recovery-codes li")]
    return person, codes


def sign_in(browser, base, name, password, code, shots, prefix):
    browser.get(base + "/signin")
    wait_heading(browser, "Sign in")
    fill(browser, "name", name)
    fill(browser, "password", password)
    fill(browser, "code", code)
    if prefix:
        shot(browser, shots, f"{prefix}-signin")
    browser.find_element(By.ID, "submit").click()
    wait_heading(browser, "Fridges")


def reload_until(browser, url, found, what):
    """Loads `url` again until `found(browser)` holds: the gateway's state changes on its own."""
    def check(b):
        b.get(url)
        return found(b)
    return WebDriverWait(browser, 60, poll_frequency=0.5, ignored_exceptions=LOADING).until(check, what)


def pharmacist(args, browser, seen):
    anna, codes = set_up(browser, args.anna, args.password, args.shots, "01")
    seen["recovery_codes"] = len(codes)
    # A recovery code signs in; the authenticator's next code is kept for the signature.
    sign_in(browser, args.base, "anna", args.password, codes[0], args.shots, "02")
    assert browser.find_element(By.ID, "signed-in-as").text == "anna"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    row = reload_until(
        browser, args.base + "/",
        lambda b: (r := b.find_elements(By.ID, "fridge-fridge-01")) and "too warm" in r[0].text and r[0],
        "fridge-01 shown too warm on the overview")
    seen["overview_row"] = row.text
    # Live updates (server-sent events, /assets/live.js) arrive without a reload.
    seen["live"] = wait(browser).until(
        lambda b: (t := b.find_element(By.ID, "live").text).startswith("Live: updated") and t,
        "a live update of the overview")
    shot(browser, args.shots, "03-overview")
    link = reload_until(
        browser, args.base + "/alerts",
        # The temperature alert's row (not, say, a missed daily check raised meanwhile).
        lambda b: next((a for a in b.find_elements(By.CSS_SELECTOR, "tr.open a.ack")
                        if "temperature above" in a.find_element(By.XPATH, "./ancestor::tr").text), None),
        "an alert to acknowledge on /alerts")
    shot(browser, args.shots, "04-alerts")
    link.click()
    wait_heading(browser, "Acknowledge and sign an alert")
    seen["ack_url"] = browser.current_url
    seen["headline"] = browser.find_element(By.ID, "headline").text
    browser.find_element(By.ID, "meaning-acknowledged").click()
    fill(browser, "note", "Moved all stock to fridge-02; service called")
    Select(browser.find_element(By.ID, "disposition")).select_by_value("quarantined")
    fill(browser, "password", args.password)
    fill(browser, "code", anna.code())
    shot(browser, args.shots, "05-ack-form")
    browser.find_element(By.ID, "submit").click()
    wait_heading(browser, "Signed")
    shot(browser, args.shots, "06-signed")
    seen["record_sha256"] = browser.find_element(By.ID, "record-sha256").text
    seen["audit_seq"] = int(browser.find_element(By.ID, "audit-seq").text)
    seen["alert_state"] = browser.find_element(By.ID, "alert-state").text
    browser.find_element(By.ID, "signout").click()
    wait_heading(browser, "Sign in")
    shot(browser, args.shots, "07-signed-out")

    tom, _ = set_up(browser, args.tom, args.password, args.shots, None)
    sign_in(browser, args.base, "tom", args.password, tom.code(), args.shots, None)
    browser.get(seen["ack_url"])
    seen["technician_ack_heading"] = heading(browser)
    shot(browser, args.shots, "08-technician-refused")


def session_cookie(browser):
    cookie = browser.get_cookie("__Host-rxgate_session")
    return f"{cookie['name']}={cookie['value']}"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(url, cookie):
    """GET `url` outside the browser with only `cookie` (as a thief would): (status, body)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect)
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with opener.open(request, timeout=WAIT) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sign_out(browser):
    browser.find_element(By.ID, "signout").click()
    wait_heading(browser, "Sign in")


def roles(args, browser, seen):
    pw = args.password
    # An admin adds an account from the users page; its set-up link is shown once.
    ada, _ = set_up(browser, args.ada, pw, args.shots, None)
    sign_in(browser, args.base, "ada", pw, ada.code(), args.shots, None)
    browser.get(args.base + "/users")
    wait_heading(browser, "Users")
    shot(browser, args.shots, "10-users")
    fill(browser, "name", "paula")
    browser.find_element(By.ID, "role-pharmacist").click()
    browser.find_element(By.ID, "add-user").click()
    wait_heading(browser, "Account created")
    seen["paula_link"] = browser.find_element(By.ID, "setup-link").text
    shot(browser, args.shots, "11-user-link")
    sign_out(browser)

    # A technician may see the devices but not revoke one.
    tom, _ = set_up(browser, args.tom, pw, args.shots, None)
    sign_in(browser, args.base, "tom", pw, tom.code(), args.shots, None)
    browser.get(args.base + "/devices")
    wait_heading(browser, "Devices")
    seen["technician_revoke_links"] = len(browser.find_elements(By.CSS_SELECTOR, "a.revoke"))
    browser.get(f"{args.base}/devices/{args.device}/revoke")
    seen["technician_revoke_heading"] = heading(browser)
    shot(browser, args.shots, "12-technician-revoke-refused")
    sign_out(browser)

    # An installer creates a token (shown once, with its QR code) and revokes a device.
    ines, ines_codes = set_up(browser, args.ines, pw, args.shots, None)
    # A recovery code signs in: the authenticator's next code is kept for the signature.
    sign_in(browser, args.base, "ines", pw, ines_codes[0], args.shots, None)
    browser.get(args.base + "/devices")
    wait_heading(browser, "Devices")
    shot(browser, args.shots, "13-devices")
    fill(browser, "device", "fridge-07")
    Select(browser.find_element(By.ID, "kind")).select_by_value("fridge")
    browser.find_element(By.ID, "create-token").click()
    wait_heading(browser, "Enrollment token for fridge-07")
    seen["token_secret"] = browser.find_element(By.ID, "token-secret").text
    seen["token_qr"] = len(browser.find_elements(By.CSS_SELECTOR, ".qr svg"))
    seen["token_est_url"] = browser.find_element(By.ID, "est-url").text
    shot(browser, args.shots, "14-token")
    browser.get(args.base + "/devices")
    wait_heading(browser, "Devices")
    browser.find_element(By.CSS_SELECTOR, f"#device-{args.device} a.revoke").click()
    wait_heading(browser, f"Revoke {args.device}")
    fill(browser, "reason", "Replaced after a probe fault")
    fill(browser, "password", pw)
    fill(browser, "code", ines.code())
    shot(browser, args.shots, "15-revoke-form")
    browser.find_element(By.ID, "submit").click()
    wait_heading(browser, "Device revoked")
    seen["revoked"] = browser.find_element(By.ID, "revoked-device").text
    seen["revoke_audit_seq"] = int(browser.find_element(By.ID, "audit-seq").text)
    shot(browser, args.shots, "16-revoked")
    sign_out(browser)

    # An inspector reads and exports the audit trail, and may change nothing.
    _, codes = set_up(browser, args.ivy, pw, args.shots, None)
    seen["ivy_codes"] = codes[1:3]
    sign_in_to(browser, args.base, "ivy", pw, codes[3], "Audit trail")
    seen["inspector_home"] = browser.current_url
    fill(browser, "person", "ines")
    browser.find_element(By.ID, "filter").click()
    wait(browser).until(lambda b: "person=ines" in b.current_url)
    seen["audit_verification"] = browser.find_element(By.ID, "verification").text
    seen["audit_kinds"] = sorted({td.text for td in browser.find_elements(By.CSS_SELECTOR, "#entries td.kind")})
    seen["audit_actors"] = sorted({td.text for td in browser.find_elements(By.CSS_SELECTOR, "#entries td.actor")})
    shot(browser, args.shots, "17-audit")
    cookie = session_cookie(browser)
    status, body = fetch(browser.find_element(By.ID, "export-csv").get_attribute("href"), cookie)
    seen["export_status"] = status
    seen["export_csv"] = body
    for page in ("/devices", "/users", f"/devices/{args.device}/revoke"):
        browser.get(args.base + page)
        seen.setdefault("inspector_headings", {})[page] = heading(browser)
    shot(browser, args.shots, "18-inspector-refused")

    # A stolen session cookie stops working when its person signs out...
    browser.get(args.base + "/audit")
    wait_heading(browser, "Audit trail")
    stolen = session_cookie(browser)
    seen["stolen_before"] = fetch(args.base + "/audit", stolen)[0]
    sign_out(browser)
    seen["stolen_after_sign_out"] = fetch(args.base + "/audit", stolen)[0]
    # ...and when the session has been idle past the limit.
    sign_in_to(browser, args.base, "ivy", pw, codes[4], "Audit trail")
    stolen = session_cookie(browser)
    seen["idle_before"] = fetch(args.base + "/audit", stolen)[0]
    time.sleep(args.idle + 1)
    seen["stolen_after_idle"] = fetch(args.base + "/audit", stolen)[0]


def sign_in_to(browser, base, name, password, code, landing):
    browser.get(base + "/signin")
    wait_heading(browser, "Sign in")
    fill(browser, "name", name)
    fill(browser, "password", password)
    fill(browser, "code", code)
    browser.find_element(By.ID, "submit").click()
    wait_heading(browser, landing)


def expired(args, browser, seen):
    browser.get(args.base + "/signin")
    wait_heading(browser, "Sign in")
    fill(browser, "name", args.name)
    fill(browser, "password", args.password)
    fill(browser, "code", args.code)
    browser.find_element(By.ID, "submit").click()
    wait(browser).until(lambda b: b.find_elements(By.ID, "error"))
    seen["expired_heading"] = heading(browser)
    seen["expired_error"] = browser.find_element(By.ID, "error").text
    shot(browser, args.shots, "19-expired-refused")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["pharmacist", "roles", "expired"])
    parser.add_argument("--base", required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument("--password", default="cold chain keeper 42")
    for person in ("anna", "tom", "ada", "ines", "ivy"):
        parser.add_argument(f"--{person}")
    parser.add_argument("--device")
    parser.add_argument("--idle", type=float, default=0)
    parser.add_argument("--name")
    parser.add_argument("--code")
    args = parser.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    seen = {}
    browser = driver()
    try:
        {"pharmacist": pharmacist, "roles": roles, "expired": expired}[args.scenario](args, browser, seen)
    finally:
        browser.quit()
    seen["axe_pages"] = PAGES_CHECKED
    seen["axe_violations"] = VIOLATIONS
    print(json.dumps(seen))


if __name__ == "__main__":
    sys.exit(main())
