"""The temperature log in headless Chromium, driven by Selenium: a pharmacist acknowledges a real
excursion's alert with a signature and a product disposition, reads the fridge's log, downloads
its CSV and opens the printable excursion report; a technician signs the daily min/max check.

Run by tests/temperature_log.rs against a real `rxgate run`; prints one JSON line with what it
saw. Every wait is explicit (WebDriverWait with a deadline); nothing sleeps.

    temperature_log.py --base URL --pia LINK --tom LINK --shots DIR [--password PW]
"""

import argparse
import json
import os
import re
import ssl
import sys
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console import driver, fill, reload_until, set_up, shot, sign_in, wait_heading  # noqa: E402


def text_of(browser, element_id):
    return browser.find_element(By.ID, element_id).text


def fetch(browser, url):
    """GETs `url` with the browser's session cookie (the console's certificate is self-signed)."""
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    request = urllib.request.Request(url, headers={"Cookie": cookies})
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(request, context=context, timeout=20) as answer:
        headers = {k.lower(): v for k, v in answer.headers.items()}
        return answer.status, headers, answer.read().decode("utf-8")


def max_of(since_check):
    """The maximum in `4.1 to 9.4 °C (since …)`."""
    found = re.match(r"\s*(-?[\d.]+) to (-?[\d.]+) °C", since_check)
    assert found, since_check
    return float(found.group(2))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--pia", required=True)
    parser.add_argument("--tom", required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument("--password", default="cold chain keeper 42")
    args = parser.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    seen = {}
    log_url = args.base + "/fridges/fridge-01"
    browser = driver()
    try:
        pia, codes = set_up(browser, args.pia, args.password, args.shots, None)
        sign_in(browser, args.base, "pia", args.password, codes[0], args.shots, None)
        browser.find_element(By.CSS_SELECTOR, "#fridge-fridge-01 a.log").click()
        wait_heading(browser, "Temperature log of fridge-01")
        # The excursion is recorded once it is over (the compressor works again).
        reload_until(browser, log_url,
                     lambda b: b.find_elements(By.CSS_SELECTOR, "a.excursion-report"),
                     "a finished excursion in the temperature log")
        seen["chart_loaded"] = browser.execute_script(
            "const i = document.querySelector('img.chart'); return i.complete && i.naturalWidth > 0;")
        shot(browser, args.shots, "20-fridge-log")

        link = reload_until(
            browser, args.base + "/alerts",
            lambda b: next((a for a in b.find_elements(By.CSS_SELECTOR, "a.ack")
                            if "temperature above" in a.find_element(By.XPATH, "../..").text), None),
            "the excursion's alert to acknowledge")
        link.click()
        wait_heading(browser, "Acknowledge and sign an alert")
        browser.find_element(By.ID, "meaning-acknowledged").click()
        fill(browser, "note", "Stock moved to fridge-02; compressor serviced")
        Select(browser.find_element(By.ID, "disposition")).select_by_value("quarantined")
        fill(browser, "password", args.password)
        fill(browser, "code", pia.code())
        shot(browser, args.shots, "21-ack-form")
        browser.find_element(By.ID, "submit").click()
        wait_heading(browser, "Signed")

        browser.get(log_url)
        wait_heading(browser, "Temperature log of fridge-01")
        row = browser.find_element(By.CSS_SELECTOR, "tr[id^=excursion-]")
        seen["log_row"] = row.text
        assert "quarantined" in row.find_element(By.CSS_SELECTOR, "td.disposition").text, row.text
        shot(browser, args.shots, "22-fridge-log-signed")
        status, headers, body = fetch(
            browser, browser.find_element(By.ID, "download-csv").get_attribute("href"))
        assert status == 200 and headers.get("content-type", "").startswith("text/csv"), headers
        seen["csv_first_line"] = body.splitlines()[0]
        seen["csv_rows"] = len(body.splitlines()) - 1

        row.find_element(By.CSS_SELECTOR, "a.excursion-report").click()
        wait_heading(browser, "Temperature excursion report")
        seen["report"] = {
            field: text_of(browser, element)
            for field, element in [("duration", "duration"), ("peak", "peak"), ("mkt", "mkt"),
                                   ("in_calibration", "in-calibration"), ("signer", "signer"),
                                   ("meaning", "meaning"), ("disposition", "disposition"),
                                   ("audit_seq", "audit-seq"), ("certificate", "certificate")]
        }
        seen["report"]["has_script"] = bool(browser.find_elements(By.TAG_NAME, "script"))
        shot(browser, args.shots, "23-excursion-report")
        browser.find_element(By.ID, "signout").click()
        wait_heading(browser, "Sign in")

        # A recovery code signs in; the authenticator's next code is kept for the signature.
        tom, tom_codes = set_up(browser, args.tom, args.password, args.shots, None)
        sign_in(browser, args.base, "tom", args.password, tom_codes[0], args.shots, None)
        row = browser.find_element(By.ID, "fridge-fridge-01")
        seen["overview_before"] = row.find_element(By.CSS_SELECTOR, "td.since-check").text
        shot(browser, args.shots, "24-overview-before-check")
        browser.get(log_url + "/check")
        wait_heading(browser, "Min/max check of fridge-01")
        before = text_of(browser, "since-check")
        fill(browser, "note", "Display agrees")
        fill(browser, "password", args.password)
        fill(browser, "code", tom.code())
        shot(browser, args.shots, "25-check-form")
        browser.find_element(By.ID, "submit").click()
        wait_heading(browser, "Checked")
        shot(browser, args.shots, "26-checked")
        seen["check"] = {
            "form_since_check": before,
            "seen_max": text_of(browser, "seen-max"),
            "seen_min": text_of(browser, "seen-min"),
            "reset": text_of(browser, "since-check"),
            "reset_max": max_of(text_of(browser, "since-check")),
        }
        browser.get(args.base + "/")
        wait_heading(browser, "Fridges")
        seen["overview_after"] = browser.find_element(
            By.CSS_SELECTOR, "#fridge-fridge-01 td.since-check").text
        seen["overview_check"] = browser.find_element(
            By.CSS_SELECTOR, "#fridge-fridge-01 td.check").text
        shot(browser, args.shots, "27-overview-after-check")
    finally:
        browser.quit()
    import console
    seen["axe_pages"] = console.PAGES_CHECKED
    seen["axe_violations"] = console.VIOLATIONS
    print(json.dumps(seen))


if __name__ == "__main__":
    sys.exit(main())
