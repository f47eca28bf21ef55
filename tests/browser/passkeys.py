"""Passkeys in the console, in headless Chromium with its virtual authenticator (WebAuthn over
the DevTools protocol): a passkey added on the set-up page, another on the Passkeys page, the
first removed, and a sign-in with password and passkey; on the bare IP address the console says
passkeys need a name.

Run by tests/passkeys.rs against a real `rxgate run`; prints one JSON line with what it saw.
Every wait is explicit (WebDriverWait with a deadline); nothing sleeps.

    passkeys.py --base https://localhost:PORT --ip-base https://127.0.0.1:PORT --link LINK
                --shots DIR [--password PW]
"""

import argparse
import json
import os
import sys

from selenium.webdriver.common.by import By

from console import Person, driver, fill, shot, wait, wait_heading

PASSWORD = "cold chain keeper 42"


def virtual_authenticator(browser):
    """A platform authenticator with user verification, as a phone's or PC's screen lock is."""
    return browser.execute_cdp_cmd("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2",
        "transport": "internal",
        "hasResidentKey": True,
        "hasUserVerification": True,
        "isUserVerified": True,
        "automaticPresenceSimulation": True,
    }})["authenticatorId"]


def status_text(browser):
    return browser.find_element(By.ID, "passkey-status").text


def passkey_rows(browser):
    return [{"label": r.find_element(By.CLASS_NAME, "label").text,
             "last_used": r.find_element(By.CLASS_NAME, "last-used").text,
             "counter": r.find_element(By.CLASS_NAME, "counter").text}
            for r in browser.find_elements(By.CSS_SELECTOR, "#passkeys tr.passkey")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--ip-base", required=True)
    parser.add_argument("--link", required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument("--password", default=PASSWORD)
    args = parser.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    seen = {}
    browser = driver()
    try:
        # The console answers the bare IP address, but offers no passkey there.
        browser.get(args.ip_base + "/signin")
        wait_heading(browser, "Sign in")
        seen["ip_signin_note"] = browser.find_element(By.ID, "passkeys-unavailable").text
        seen["ip_passkey_button"] = len(browser.find_elements(By.ID, "use-passkey"))
        shot(browser, args.shots, "passkeys-01-ip-address")

        browser.execute_cdp_cmd("WebAuthn.enable", {"enableUI": False})
        first = virtual_authenticator(browser)

        # Set-up: password and TOTP, and a passkey added on the same page.
        browser.get(args.link)
        wait_heading(browser, "Set up your account")
        anna = Person(browser.find_element(By.ID, "totp-secret").text)
        fill(browser, "password", args.password)
        fill(browser, "password2", args.password)
        fill(browser, "code", anna.code())
        fill(browser, "passkey_label", "setup PC")
        wait(browser).until(lambda b: b.find_element(By.ID, "add-passkey").is_displayed(),
                            "the Add a passkey button shown by /assets/passkey.js")
        browser.find_element(By.ID, "add-passkey").click()
        wait(browser).until(lambda b: "ready" in status_text(b), "the set-up passkey ready")
        shot(browser, args.shots, "passkeys-02-setup")
        browser.find_element(By.ID, "submit").click()
        wait_heading(browser, "Your account is ready")
        seen["setup_passkey"] = browser.find_element(By.ID, "passkey-result").text
        shot(browser, args.shots, "passkeys-03-setup-done")

        # Signed in with a TOTP code, the Passkeys page lists it; a second device adds another.
        browser.get(args.base + "/signin")
        wait_heading(browser, "Sign in")
        fill(browser, "name", "anna")
        fill(browser, "password", args.password)
        fill(browser, "code", anna.code())
        browser.find_element(By.ID, "submit").click()
        wait_heading(browser, "Fridges")
        browser.find_element(By.LINK_TEXT, "Passkeys").click()
        wait_heading(browser, "Passkeys")
        seen["after_setup"] = passkey_rows(browser)
        browser.execute_cdp_cmd("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": first})
        virtual_authenticator(browser)
        fill(browser, "label", "office PC")
        wait(browser).until(lambda b: b.find_element(By.ID, "add-passkey").is_displayed())
        browser.find_element(By.ID, "add-passkey").click()
        wait(browser).until(lambda b: b.find_elements(By.ID, "message") or b.find_elements(By.ID, "error"),
                            "the Passkeys page after adding")
        errors = browser.find_elements(By.ID, "error")
        assert not errors, errors[0].text
        seen["added_message"] = browser.find_element(By.ID, "message").text
        shot(browser, args.shots, "passkeys-04-added")
        seen["after_add"] = passkey_rows(browser)

        # The set-up PC's passkey is removed (its authenticator is gone).
        browser.find_element(By.CSS_SELECTOR, "button[aria-label='Remove passkey setup PC']").click()
        wait(browser).until(lambda b: "removed" in b.find_element(By.ID, "message").text)
        seen["after_remove"] = passkey_rows(browser)
        browser.find_element(By.ID, "signout").click()
        wait_heading(browser, "Sign in")

        # Password, then the passkey instead of a code.
        fill(browser, "name", "anna")
        fill(browser, "password", args.password)
        shot(browser, args.shots, "passkeys-05-signin")
        browser.find_element(By.ID, "use-passkey").click()
        wait_heading(browser, "Confirm with your passkey")
        wait(browser).until(lambda b: b.find_element(By.ID, "passkey-go").is_displayed())
        shot(browser, args.shots, "passkeys-06-confirm")
        browser.find_element(By.ID, "passkey-go").click()
        wait_heading(browser, "Fridges")
        seen["signed_in_as"] = browser.find_element(By.ID, "signed-in-as").text
        shot(browser, args.shots, "passkeys-07-signed-in")
        browser.get(args.base + "/account/passkeys")
        wait_heading(browser, "Passkeys")
        seen["after_sign_in"] = passkey_rows(browser)
        shot(browser, args.shots, "passkeys-08-list")
        browser.find_element(By.ID, "signout").click()
        wait_heading(browser, "Sign in")

        # A wrong password gets no passkey challenge.
        fill(browser, "name", "anna")
        fill(browser, "password", "not the password at all")
        browser.find_element(By.ID, "use-passkey").click()
        wait_heading(browser, "Sign in")
        seen["wrong_password"] = browser.find_element(By.ID, "error").text
    finally:
        browser.quit()
    import console
    seen["axe_pages"] = console.PAGES_CHECKED
    seen["axe_violations"] = console.VIOLATIONS
    print(json.dumps(seen))


if __name__ == "__main__":
    sys.exit(main())
