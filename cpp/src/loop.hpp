// The one driver of a generation loop (rar_deploy/runtime/loops.py's drive in Python): Start, then Step until
// Done, calling on_step(loop) after the start (position 0) and after every step. RarLoop and VarLoop have the
// same shape: Start(inputs), Step(), Done(), position(), TokensDone(), Tokens().
#pragma once

namespace rar::detail {

template <typename Loop, typename OnStep>
void Drive(Loop& loop, const typename Loop::Inputs& inputs, OnStep&& on_step) {
  loop.Start(inputs);
  on_step(loop);
  while (!loop.Done()) {
    loop.Step();
    on_step(loop);
  }
}

}  // namespace rar::detail
