#!/usr/bin/env python3
"""Webmail in a real browser: headless Chromium driven through chromedriver (Selenium).

    browser.py --login-url URL --user ADDR --password PW --shots DIR --files DIR \
               --reply-subject S --move-subject S --delete-subject S --folder NAME

Signs in with the login form, lands on the front door's Inbox, opens the message with subject
--reply-subject and replies to it with a file attached (uploaded through the file input), finds
the reply in Sent, creates the folder --folder and moves the message --move-subject there,
deletes the message --delete-subject (it goes to Trash), and signs out, ending on the sign-in
page. After each page it saves a screenshot (01-login.png, 02-inbox.png, ...) in --shots.

Prints one `STEP <name>` line per step, `SCREENSHOT <path>` per picture, `ATTACHED <name>` for the
uploaded file, and `BROWSER OK` at the end. Exits non-zero (with the reason, the current URL and
a last screenshot) on the first failure. Needs Debian's chromium, chromium-driver and
python3-selenium.
"""

import argparse
import os
import shutil
import sys
import traceback
from urllib.parse import urlsplit

CHROMIUM_CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
DRIVER_CANDIDATES = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]

# The machine is slow and shared: generous waits, but each one explicit.
WAIT_SECS = 90
PAGE_LOAD_SECS = 180

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError as e:  # pragma: no cover - reported to the caller
    sys.exit(
        "Selenium is not importable (%s): install Debian's python3-selenium and run this "
        "with /usr/bin/python3" % e
    )


def find_binary(candidates, name):
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found:
        return found
    sys.exit(
        "%s not found (looked at %s and PATH): install Debian's chromium and chromium-driver"
        % (name, ", ".join(candidates))
    )


class Browser:
    def __init__(self, args):
        self.args = args
        self.shot_no = 0
        chromium = find_binary(CHROMIUM_CANDIDATES, "chromium")
        driver = find_binary(DRIVER_CANDIDATES, "chromedriver")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for a in [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,900",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--password-store=basic",
            "--lang=en-US",
        ]:
            opts.add_argument(a)
        log = os.path.join(args.shots, "chromedriver.log")
        service = Service(executable_path=driver, log_path=log)
        self.d = webdriver.Chrome(service=service, options=opts)
        self.d.set_page_load_timeout(PAGE_LOAD_SECS)
        self.front_door = None

    def quit(self):
        try:
            self.d.quit()
        except Exception:  # noqa: BLE001 - closing after a failure must not hide it
            pass

    # --- waiting -------------------------------------------------------------------------------

    def wait(self, cond, what):
        try:
            return WebDriverWait(self.d, WAIT_SECS, poll_frequency=0.2).until(cond)
        except TimeoutException:
            raise AssertionError(
                "timed out after %ss waiting for %s (at %s)" % (WAIT_SECS, what, self.d.current_url)
            ) from None

    def loaded(self):
        self.wait(
            lambda d: d.execute_script("return document.readyState") == "complete",
            "the page to finish loading",
        )

    def navigate(self, action, what):
        """Run `action` (a click that leaves the page) and wait for the next page to load.

        The old page is marked with a script variable; the next one is there once a loaded
        document lacks it. (Element references to the old page are not used: during a
        navigation Chromium may answer for them with errors other than "stale".)"""
        self.d.execute_script("window.__mmOldPage = true;")
        action()

        def next_page(d):
            try:
                return d.execute_script(
                    "return window.__mmOldPage !== true && document.readyState === 'complete';"
                )
            except WebDriverException:
                return False  # between documents: ask again

        self.wait(next_page, what)

    def element(self, by, sel, what=None):
        return self.wait(EC.presence_of_element_located((by, sel)), what or sel)

    def clickable(self, by, sel, what=None):
        return self.wait(EC.element_to_be_clickable((by, sel)), what or sel)

    def text_present(self, by, sel, text):
        self.wait(EC.text_to_be_present_in_element((by, sel), text), "%r in %s" % (text, sel))

    def notice(self, text):
        self.text_present(By.CSS_SELECTOR, "main", text)

    # --- pictures and checks -------------------------------------------------------------------

    def shot(self, name):
        self.shot_no += 1
        path = os.path.join(self.args.shots, "%02d-%s.png" % (self.shot_no, name))
        if not self.d.save_screenshot(path):
            raise AssertionError("no screenshot saved at %s" % path)
        print("SCREENSHOT %s" % path, flush=True)

    def step(self, name):
        print("STEP %s" % name, flush=True)

    def on_front_door(self, path_prefix):
        u = urlsplit(self.d.current_url)
        here = "%s://%s" % (u.scheme, u.netloc)
        if here != self.front_door or not u.path.startswith(path_prefix):
            raise AssertionError(
                "expected %s%s..., at %s" % (self.front_door, path_prefix, self.d.current_url)
            )

    def row(self, subject):
        """The XPath of a message list row whose subject is `subject`."""
        return (
            "//table[contains(@class,'messages')]//tr[.//span[@class='subj' and normalize-space()=%s]]"
            % xpath_literal(subject)
        )

    def open_folder(self, name):
        link = self.clickable(
            By.XPATH,
            "//nav[contains(@class,'side')]//a[.//span[@class='name' and normalize-space()=%s]]"
            % xpath_literal(name),
            "the %s link in the sidebar" % name,
        )
        self.navigate(link.click, "the %s folder" % name)
        self.on_front_door("/folder/")
        self.text_present(By.CSS_SELECTOR, "main h1", name)

    def select_row(self, subject):
        box = self.clickable(
            By.XPATH,
            self.row(subject) + "//input[@type='checkbox' and @name='id']",
            "the checkbox of %r" % subject,
        )
        if not box.is_selected():
            box.click()
        self.wait(lambda d: box.is_selected(), "the checkbox of %r to be ticked" % subject)


def xpath_literal(s):
    if "'" not in s:
        return "'%s'" % s
    if '"' not in s:
        return '"%s"' % s
    return "concat('%s')" % s.replace("'", "', \"'\", '")


def run(b, a):
    d = b.d
    login = urlsplit(a.login_url)
    login_origin = "%s://%s" % (login.scheme, login.netloc)

    b.step("login page")
    d.get(a.login_url)
    b.loaded()
    b.element(By.CSS_SELECTOR, "form[action='/login'] input[name='user']", "the sign-in form")
    b.text_present(By.TAG_NAME, "h1", "Sign in")
    b.shot("login")

    b.step("sign in")
    d.find_element(By.NAME, "user").send_keys(a.user)
    d.find_element(By.NAME, "password").send_keys(a.password)
    submit = d.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type='submit']")
    b.navigate(submit.click, "the front door after signing in")
    b.wait(EC.url_contains("/folder/Inbox"), "the Inbox after signing in")
    u = urlsplit(d.current_url)
    b.front_door = "%s://%s" % (u.scheme, u.netloc)
    if b.front_door == login_origin:
        raise AssertionError("signing in stayed on the login server: %s" % d.current_url)
    b.text_present(By.CSS_SELECTOR, "main h1", "Inbox")
    b.text_present(By.CSS_SELECTOR, "header .who", a.user)
    for s in (a.reply_subject, a.move_subject, a.delete_subject):
        b.element(By.XPATH, b.row(s), "%r in the Inbox" % s)
    print("FRONT_DOOR %s" % b.front_door, flush=True)
    b.shot("inbox")

    b.step("open the message")
    link = b.clickable(By.XPATH, b.row(a.reply_subject) + "//td[@class='subject']/a")
    b.navigate(link.click, "the message page")
    b.on_front_door("/message/")
    b.text_present(By.CSS_SELECTOR, "article.message h1", a.reply_subject)
    b.element(By.CSS_SELECTOR, "article.message .body", "the message body")
    b.shot("message")

    b.step("reply with an attachment")
    reply = b.clickable(By.CSS_SELECTOR, "a[href^='/compose?reply=']", "the Reply button")
    b.navigate(reply.click, "the reply form")
    b.on_front_door("/compose")
    form = b.element(By.CSS_SELECTOR, "form.compose", "the compose form")
    subject = form.find_element(By.NAME, "subject").get_attribute("value")
    if subject != "Re: " + a.reply_subject:
        raise AssertionError("the reply's subject is %r" % subject)
    to = form.find_element(By.NAME, "to").get_attribute("value")
    if not to.strip():
        raise AssertionError("the reply has no recipient")
    text = form.find_element(By.NAME, "text")
    # Above the quote, as a person writes a reply.
    text.click()
    text.send_keys(Keys.CONTROL, Keys.HOME)
    text.send_keys("Thanks, the notes are attached.\n\n")
    name = "notes.txt"
    path = os.path.join(a.files, name)
    with open(path, "w") as f:
        f.write("Attached from a browser.\nline two\n")
    form.find_element(By.CSS_SELECTOR, "input[type='file'][name='attachments']").send_keys(path)
    b.wait(
        lambda d: d.execute_script(
            "var i=document.querySelector(\"input[type='file'][name='attachments']\");"
            "return i.files.length === 1 ? i.files[0].name : '';"
        )
        == name,
        "the file input to hold %s" % name,
    )
    print("ATTACHED %s" % name, flush=True)
    d.execute_script(
        "document.querySelector(\"input[type='file'][name='attachments']\")"
        ".scrollIntoView({block: 'center'});"
    )
    b.shot("reply")
    send = form.find_element(By.CSS_SELECTOR, "button[type='submit']")
    b.navigate(send.click, "the page after sending")
    b.on_front_door("/folder/Inbox")
    b.notice("Message sent.")
    b.shot("sent-notice")

    b.step("find the reply in Sent")
    b.open_folder("Sent")
    b.element(By.XPATH, b.row("Re: " + a.reply_subject), "the reply in Sent")
    link = b.clickable(By.XPATH, b.row("Re: " + a.reply_subject) + "//td[@class='subject']/a")
    b.navigate(link.click, "the sent reply")
    b.text_present(By.CSS_SELECTOR, "article.message h1", "Re: " + a.reply_subject)
    b.text_present(By.CSS_SELECTOR, "section.attachments", name)
    b.shot("sent")

    b.step("create a folder")
    manage = b.clickable(By.CSS_SELECTOR, "nav.side a.manage", "Manage folders")
    b.navigate(manage.click, "the folders page")
    b.on_front_door("/folders")
    field = b.element(By.CSS_SELECTOR, "form[action='/folders/create'] input[name='name']")
    field.send_keys(a.folder)
    create = d.find_element(By.CSS_SELECTOR, "form[action='/folders/create'] button[type='submit']")
    b.navigate(create.click, "the folders page after creating one")
    b.notice("Folder created.")
    b.element(
        By.XPATH,
        "//nav[contains(@class,'side')]//span[@class='name' and normalize-space()=%s]"
        % xpath_literal(a.folder),
        "the new folder in the sidebar",
    )
    b.shot("folder-created")

    b.step("move a message")
    b.open_folder("Inbox")
    b.select_row(a.move_subject)
    Select(b.element(By.CSS_SELECTOR, "main form[action='/messages'] select[name='to']")).select_by_value(
        a.folder
    )
    move = d.find_element(By.CSS_SELECTOR, "main button[name='action'][value='move']")
    b.navigate(move.click, "the Inbox after moving")
    b.notice("Moved.")
    b.wait(
        EC.invisibility_of_element_located((By.XPATH, b.row(a.move_subject))),
        "%r to leave the Inbox" % a.move_subject,
    )
    b.open_folder(a.folder)
    b.element(By.XPATH, b.row(a.move_subject), "%r in %s" % (a.move_subject, a.folder))
    b.shot("moved")

    b.step("delete a message")
    b.open_folder("Inbox")
    b.select_row(a.delete_subject)
    delete = d.find_element(By.CSS_SELECTOR, "main button[name='action'][value='delete']")
    b.navigate(delete.click, "the Inbox after deleting")
    b.notice("Moved to Trash.")
    b.wait(
        EC.invisibility_of_element_located((By.XPATH, b.row(a.delete_subject))),
        "%r to leave the Inbox" % a.delete_subject,
    )
    b.shot("deleted")
    b.open_folder("Trash")
    b.element(By.XPATH, b.row(a.delete_subject), "%r in Trash" % a.delete_subject)
    b.shot("trash")

    b.step("sign out")
    out = b.clickable(By.CSS_SELECTOR, "form[action='/logout'] button[type='submit']", "Sign out")
    b.navigate(out.click, "the sign-in page after signing out")
    b.wait(
        lambda d: d.current_url.startswith(login_origin),
        "the login server after signing out",
    )
    b.element(By.CSS_SELECTOR, "form[action='/login'] input[name='password']", "the sign-in form")
    b.text_present(By.TAG_NAME, "h1", "Sign in")
    b.text_present(By.TAG_NAME, "body", "You have signed out.")
    if any(c.get("name") == "mm_session" and c.get("value") for c in d.get_cookies()):
        raise AssertionError("the session cookie survived signing out")
    b.shot("signed-out")

    # Signed out for real: the front door sends the browser back to sign in.
    b.step("front door refuses the old session")
    d.get(b.front_door + "/folder/Inbox")
    b.loaded()
    b.wait(lambda d: d.current_url.startswith(login_origin), "a redirect to the sign-in page")
    b.element(By.CSS_SELECTOR, "form[action='/login']", "the sign-in form")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--login-url", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--shots", required=True, help="where screenshots go")
    p.add_argument("--files", required=True, help="a scratch directory for the upload")
    p.add_argument("--reply-subject", required=True)
    p.add_argument("--move-subject", required=True)
    p.add_argument("--delete-subject", required=True)
    p.add_argument("--folder", required=True)
    a = p.parse_args()
    os.makedirs(a.shots, exist_ok=True)
    os.makedirs(a.files, exist_ok=True)

    b = Browser(a)
    try:
        run(b, a)
    except Exception as e:  # noqa: BLE001 - reported with context, then a non-zero exit
        traceback.print_exc()
        print("FAILED: %s" % e, flush=True)
        print("URL: %s" % b.d.current_url, flush=True)
        try:
            path = os.path.join(a.shots, "failure.png")
            b.d.save_screenshot(path)
            print("SCREENSHOT %s" % path, flush=True)
            print("PAGE:\n%s" % b.d.page_source[:4000], flush=True)
        except Exception:  # noqa: BLE001
            pass
        b.quit()
        sys.exit(1)
    b.quit()
    print("BROWSER OK", flush=True)


if __name__ == "__main__":
    main()
