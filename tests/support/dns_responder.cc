#include "tests/support/dns_responder.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace poolside::test {
namespace {

constexpr uint16_t kTypeA = 1;
constexpr uint16_t kTypeAaaa = 28;
constexpr uint8_t kNoError = 0;
constexpr uint8_t kServFail = 2;
constexpr uint8_t kNxDomain = 3;
constexpr uint32_t kTtlSeconds = 1;
// How often the serving thread looks at stopping_.
constexpr int kPollMs = 100;

void AppendU16(std::string& out, uint16_t value) {
  out.push_back(static_cast<char>(value >> 8));
  out.push_back(static_cast<char>(value & 0xff));
}

void AppendU32(std::string& out, uint32_t value) {
  AppendU16(out, static_cast<uint16_t>(value >> 16));
  AppendU16(out, static_cast<uint16_t>(value & 0xffff));
}

uint16_t ReadU16(const std::string& in, size_t at) {
  return static_cast<uint16_t>((static_cast<uint8_t>(in[at]) << 8) |
                               static_cast<uint8_t>(in[at + 1]));
}

}  // namespace

DnsResponder::DnsResponder(std::string name) : name_(absl::AsciiStrToLower(name)) {}

DnsResponder::~DnsResponder() {
  stopping_.store(true);
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) close(fd_);
}

absl::Status DnsResponder::Start() {
  fd_ = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return absl::InternalError(absl::StrCat("dns responder: socket: ", strerror(errno)));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return absl::InternalError(absl::StrCat("dns responder: bind: ", strerror(errno)));
  }
  port_ = ntohs(address.sin_port);
  thread_ = std::thread([this] { Serve(); });
  return absl::OkStatus();
}

void DnsResponder::SetAddresses(std::vector<std::string> addresses) {
  absl::MutexLock lock(&mutex_);
  addresses_ = std::move(addresses);
}

void DnsResponder::SetFailure(Failure failure) {
  absl::MutexLock lock(&mutex_);
  failure_ = failure;
}

std::string DnsResponder::address() const { return absl::StrCat("127.0.0.1:", port_); }

void DnsResponder::Serve() {
  char buffer[1500];
  while (!stopping_.load()) {
    pollfd fd{fd_, POLLIN, 0};
    if (poll(&fd, 1, kPollMs) <= 0) continue;
    sockaddr_storage peer{};
    socklen_t peer_length = sizeof(peer);
    const ssize_t received =
        recvfrom(fd_, buffer, sizeof(buffer), 0, reinterpret_cast<sockaddr*>(&peer), &peer_length);
    if (received <= 0) continue;
    queries_.fetch_add(1);
    const std::string reply = Answer(std::string(buffer, static_cast<size_t>(received)));
    if (reply.empty()) continue;
    sendto(fd_, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&peer), peer_length);
  }
}

std::string DnsResponder::Answer(const std::string& query) {
  // Header (12 bytes), then one question: labels, type, class.
  if (query.size() < 12 || ReadU16(query, 4) != 1) return "";
  std::string name;
  size_t at = 12;
  while (at < query.size() && query[at] != 0) {
    const size_t length = static_cast<uint8_t>(query[at]);
    if (length > 63 || at + 1 + length >= query.size()) return "";
    if (!name.empty()) name.push_back('.');
    name.append(query, at + 1, length);
    at += 1 + length;
  }
  if (at + 5 > query.size()) return "";
  const size_t question_end = at + 5;
  const uint16_t type = ReadU16(query, at + 1);

  std::vector<std::string> addresses;
  Failure failure;
  {
    absl::MutexLock lock(&mutex_);
    addresses = addresses_;
    failure = failure_;
  }
  if (failure == Failure::kSilent) return "";
  const bool ours = absl::AsciiStrToLower(name) == name_;
  uint8_t rcode = kNoError;
  if (failure == Failure::kServerFailure) {
    rcode = kServFail;
  } else if (!ours || failure == Failure::kNoSuchName) {
    rcode = kNxDomain;
  }

  std::string answers;
  uint16_t count = 0;
  if (rcode == kNoError) {
    for (const std::string& address : addresses) {
      unsigned char bytes[16];
      const bool v6 = address.find(':') != std::string::npos;
      if ((type == kTypeA && v6) || (type == kTypeAaaa && !v6)) continue;
      if (type != kTypeA && type != kTypeAaaa) continue;
      if (inet_pton(v6 ? AF_INET6 : AF_INET, address.c_str(), bytes) != 1) continue;
      AppendU16(answers, 0xc00c);  // The name: a pointer to the question's.
      AppendU16(answers, type);
      AppendU16(answers, 1);  // IN
      AppendU32(answers, kTtlSeconds);
      AppendU16(answers, v6 ? 16 : 4);
      answers.append(reinterpret_cast<const char*>(bytes), v6 ? 16 : 4);
      ++count;
    }
  }
  std::string reply = query.substr(0, 2);  // ID.
  // QR, the query's opcode and RD, AA; RA and the rcode.
  reply.push_back(static_cast<char>(0x80 | (query[2] & 0x79) | 0x04));
  reply.push_back(static_cast<char>(0x80 | rcode));
  AppendU16(reply, 1);
  AppendU16(reply, count);
  AppendU16(reply, 0);
  AppendU16(reply, 0);
  reply.append(query, 12, question_end - 12);
  reply += answers;
  return reply;
}

}  // namespace poolside::test
