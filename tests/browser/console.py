"""The pharmacy console in headless Chromium, driven by Selenium: set-up, sign-in, the fridge
overview, an alert acknowledged with an electronic signature, sign-out, and a technician refused.

Run by tests/console.rs against a real `rxgate run`; prints one JSON line with what it saw.
Every wait is explicit (WebDriverWait with a deadline); nothing sleeps.

    console.py --base URL --anna LINK --tom LINK --shots DIR [--password PW]
"""

import argparse
import json
import os
import sys
import time

import pyotp
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 20  # seconds, for any one thing to appear
# While a page is replaced, its elements vanish or go stale: look again until the deadline.
LOADING = (NoSuchElementException, StaleElementReferenceException)


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
        step = int(time.time()) // 30
        if self.last_step is not None and step <= self.last_step:
            step = self.last_step + 1  # the next step is accepted as clock skew (±1)
        self.last_step = step
        return self.totp.at(step * 30)


def shot(browser, shots, name):
    wait(browser).until(lambda b: b.execute_script("return document.readyState") == "complete")
    browser.save_screenshot(os.path.join(shots, f"{name}.png"))


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--anna", required=True)
    parser.add_argument("--tom", required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument("--password", default="cold chain keeper 42")
    args = parser.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    seen = {}
    browser = driver()
    try:
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
        shot(browser, args.shots, "03-overview")
        link = reload_until(
            browser, args.base + "/alerts",
            lambda b: (a := b.find_elements(By.CSS_SELECTOR, "a.ack")) and a[0],
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
    finally:
        browser.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    sys.exit(main())
