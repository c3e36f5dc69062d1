/**
 * Log lines about bad input quote what came in; a secret pasted into the wrong field must not reach
 * the log that way. Anything shaped like one of the project's secrets (kind_ followed by base64url),
 * an enrollment string, or a long run of base64url (a key, a MAC) is replaced by its kind.
 */
const SECRET =
  /\b(?:picus|session|peer)_[A-Za-z0-9_-]{16,}|picus-enroll-1\.[A-Za-z0-9_-]+|[A-Za-z0-9_-]{40,}/g

export const redactSecrets = (text: string): string =>
  text.replace(SECRET, (found) =>
    found.startsWith("picus-enroll-1.")
      ? "[enrollment string]"
      : /^(picus|session|peer)_/.test(found)
        ? `[${found.slice(0, found.indexOf("_"))} secret]`
        : "[redacted]",
  )
