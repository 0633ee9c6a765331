#pragma once
// A minimal blocking HTTP/1.1 client for tests (one request per connection): GET, POST with
// headers, raw bytes (for malformed requests), and chunked bodies decoded.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace shoal::test {

struct http_response {
  int status = 0;       // 0: no answer
  std::string headers;  // the header block, lines as sent
  std::string body;
};

inline http_response http_get(const std::string& host, std::int32_t port, const std::string& path) {
  http_response r;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return r;
  }
  const std::string req =
      "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return r;
  }
  // Read to the end of the body: Content-Length when given (a server may keep the connection
  // open for the next request), else until the server closes.
  std::string all;
  char buf[4096];
  std::size_t want = std::string::npos;
  for (;;) {
    if (want == std::string::npos) {
      const auto end = all.find("\r\n\r\n");
      if (end != std::string::npos) {
        std::string head = all.substr(0, end);
        for (auto& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        const auto cl = head.find("\r\ncontent-length:");
        if (cl != std::string::npos)
          want = end + 4 + std::strtoull(head.c_str() + cl + 17, nullptr, 10);
      }
    }
    if (want != std::string::npos && all.size() >= want) break;
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    all.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  const auto head_end = all.find("\r\n\r\n");
  if (all.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos) return r;
  r.status = std::atoi(all.c_str() + all.find(' ') + 1);
  r.headers = all.substr(0, head_end);
  r.body = all.substr(head_end + 4);
  return r;
}

/// Decodes a chunked transfer-encoded body (returns the input when it is not well-formed).
inline std::string dechunk(const std::string& in) {
  std::string out;
  std::size_t pos = 0;
  while (pos < in.size()) {
    const auto eol = in.find("\r\n", pos);
    if (eol == std::string::npos) return in;
    const auto n = std::strtoull(in.c_str() + pos, nullptr, 16);
    if (n == 0) return out;
    if (eol + 2 + n > in.size()) return in;
    out.append(in, eol + 2, n);
    pos = eol + 2 + n + 2;
  }
  return out;
}

/// Connects, sends `raw` as is, reads until the server closes (or `timeout_s`), and parses what
/// came back. For requests a well-behaved client would never send.
inline http_response http_raw(const std::string& host, std::int32_t port, const std::string& raw, int timeout_s = 30) {
  http_response r;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  timeval tv{timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return r;
  }
  // The server may answer (413) and close before it has read everything: a short send is fine.
  std::size_t sent = 0;
  while (sent < raw.size()) {
    const ssize_t n = ::send(fd, raw.data() + sent, raw.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  std::string all;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    all.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  const auto head_end = all.find("\r\n\r\n");
  if (all.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos) return r;
  r.status = std::atoi(all.c_str() + all.find(' ') + 1);
  r.headers = all.substr(0, head_end);
  r.body = all.substr(head_end + 4);
  std::string lower = r.headers;
  for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lower.find("transfer-encoding: chunked") != std::string::npos) {
    r.body = dechunk(r.body);
  } else if (const auto cl = lower.find("\r\ncontent-length:"); cl != std::string::npos) {
    // A second response (pipelining) must not be taken for this one's body.
    r.body = r.body.substr(0, std::strtoull(lower.c_str() + cl + 17, nullptr, 10));
  }
  return r;
}

/// An HTTP/1.1 request with `Connection: close`; `headers` as "Name: value" lines.
inline http_response http_request(const std::string& host, std::int32_t port, const std::string& method,
                                  const std::string& path, const std::string& body = "",
                                  const std::vector<std::string>& headers = {}) {
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n";
  for (const auto& h : headers) req += h + "\r\n";
  if (!body.empty() || method == "POST") {
    req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  return http_raw(host, port, req);
}

/// The sum of the values of every series in a Prometheus text exposition whose line starts with
/// `series_prefix` (a metric name, or a name with the first labels); 0 when there is none.
inline double metric_value(const std::string& exposition, const std::string& series_prefix) {
  double total = 0;
  std::size_t pos = 0;
  while ((pos = exposition.find(series_prefix, pos)) != std::string::npos) {
    if (pos != 0 && exposition[pos - 1] != '\n') {
      ++pos;
      continue;
    }
    const auto eol = exposition.find('\n', pos);
    const auto line = exposition.substr(pos, eol - pos);
    total += std::atof(line.c_str() + line.rfind(' ') + 1);
    pos = eol;
  }
  return total;
}

}  // namespace shoal::test
