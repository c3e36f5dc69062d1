/** The Redis URL with this user and password in place of any it had (percent-encoded, as URLs want). */
export const redisUrlWithUser = (url: string | URL, user: string, password: string): string => {
  const copy = new URL(url)
  copy.username = encodeURIComponent(user)
  copy.password = encodeURIComponent(password)
  return copy.toString()
}
