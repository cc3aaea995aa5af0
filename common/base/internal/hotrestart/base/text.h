// Text from elsewhere, made safe to show. Names and reasons arrive from workers, peers and the
// command line; shown as they are, a newline could forge a log line and an escape sequence could
// take over the operator's terminal. Every place that shows such text goes through one of these.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace hotrestart {

// A name or text as an error message shows it: in single quotes, with control, quote, backslash
// and non-ASCII bytes escaped as \xNN, and cut after 64 bytes ("...").
std::string quote(std::string_view text);

// Free text (a worker's STATUS=, a reason it gave) for one line of a log or an event: every control
// character becomes `replacement`; everything else is kept.
std::string printable(std::string_view text, char replacement = '?');

// A command line as a shell would read it back: plain words as they are, others in single quotes.
std::string shell_words(const std::vector<std::string>& argv);

}  // namespace hotrestart
