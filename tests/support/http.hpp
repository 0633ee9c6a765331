#pragma once
// A minimal blocking HTTP/1.1 GET for tests (one request per connection).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>

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

}  // namespace shoal::test
