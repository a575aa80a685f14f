//! New flows of one chunk of frames, placed by their VIP's scheduler in
//! one call ([`Scheduler::pick_batch`]) when the first of them needs its
//! backend: a plugin's fixed cost per call (entering the sandbox, setting
//! its budget, bringing its rows up to date) is paid once per chunk and
//! VIP instead of once per flow.
//!
//! Frames that look like new flows are noted before the chunk is
//! processed; nothing is asked until one of them reaches its scheduler, so
//! SYNs a flood guard answers or forwards without state cost no pick.

use crate::flow::FlowKey;
use crate::sched::{BackendState, Scheduler};
use crate::types::VipId;

/// One noted frame: its VIP and flow, and its answer once asked
/// (`Some(None)`: the scheduler declined).
#[derive(Clone, Copy)]
struct Noted {
    vip: VipId,
    flow: (FlowKey, u64),
    answer: Option<Option<usize>>,
}

/// The noted frames of the chunk being processed; sized once for a whole
/// chunk, so noting and asking allocate nothing.
pub struct PicksAhead {
    /// In frame order.
    noted: Vec<Noted>,
    /// The last note found: frames ask in order, so the next one's note
    /// lies at or after it (most often right there), and no frame index
    /// need follow every packet.
    next: usize,
    flows: Vec<(FlowKey, u64)>,
    answers: Vec<Option<usize>>,
}

impl PicksAhead {
    pub fn new(chunk: usize) -> PicksAhead {
        PicksAhead { noted: Vec::with_capacity(chunk), next: 0, flows: Vec::with_capacity(chunk), answers: Vec::with_capacity(chunk) }
    }

    /// Forgets the last chunk's frames.
    pub fn clear(&mut self) {
        self.noted.clear();
        self.next = 0;
    }

    /// Notes the chunk's next frame that looks like a new flow of `vip`.
    /// Frames are noted in order; beyond the chunk size one is left to be
    /// picked alone. A frame of the flow noted just before (a burst of one
    /// new UDP flow) is not noted again: it will find the flow's entry.
    pub fn note(&mut self, vip: VipId, flow: (FlowKey, u64)) {
        if self.noted.last().is_some_and(|n| n.flow.1 == flow.1 && n.flow.0 == flow.0) {
            return;
        }
        if self.noted.len() < self.noted.capacity() {
            self.noted.push(Noted { vip, flow, answer: None });
        }
    }

    /// The note of the frame of `vip` carrying `flow`, if it was noted.
    fn find(&mut self, vip: VipId, flow: (&FlowKey, u64)) -> Option<usize> {
        let at = self.next + self.noted.get(self.next..)?.iter().position(|n| n.flow.1 == flow.1 && n.vip == vip && n.flow.0 == *flow.0)?;
        self.next = at;
        Some(at)
    }

    /// The answer already given for the frame of `vip` carrying `flow`, if
    /// one was: the caller then needs no pool.
    pub fn answered(&mut self, vip: VipId, flow: (&FlowKey, u64)) -> Option<Option<usize>> {
        self.find(vip, flow).and_then(|at| self.noted[at].answer)
    }

    /// The answer for the frame of `vip` carrying `flow`, not answered
    /// yet: `sched` places every noted frame of the VIP from this one on in
    /// one call over `pool`. `None`: pick it alone (it was not noted, or is
    /// its VIP's last one in the chunk). Frames ask in order.
    pub fn ask(&mut self, vip: VipId, flow: (&FlowKey, u64), sched: &mut dyn Scheduler, pool: &mut [BackendState]) -> Option<Option<usize>> {
        let at = self.find(vip, flow)?;
        let unanswered = |n: &&mut Noted| n.vip == vip && n.answer.is_none();
        self.flows.clear();
        self.flows.extend(self.noted[at..].iter_mut().filter(unanswered).map(|n| n.flow));
        if self.flows.len() == 1 {
            return None;
        }
        self.answers.clear();
        self.answers.resize(self.flows.len(), None);
        sched.pick_batch(&self.flows, pool, &mut self.answers);
        for (n, answer) in self.noted[at..].iter_mut().filter(unanswered).zip(&self.answers) {
            n.answer = Some(*answer);
        }
        self.noted[at].answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::IpProtocol;

    /// Picks the least loaded row, and records the size of every call.
    #[derive(Default)]
    struct LeastLoaded {
        calls: Vec<usize>,
    }

    impl Scheduler for LeastLoaded {
        fn pick(&mut self, _: &FlowKey, _: u64, backends: &[BackendState]) -> Option<usize> {
            (0..backends.len()).min_by_key(|&i| backends[i].active + backends[i].pending)
        }

        fn pick_batch(&mut self, flows: &[(FlowKey, u64)], backends: &mut [BackendState], out: &mut [Option<usize>]) {
            self.calls.push(flows.len());
            crate::sched::pick_each(self, flows, backends, out);
        }
    }

    fn flow(port: u16) -> (FlowKey, u64) {
        let key = FlowKey::new("198.18.0.1".parse().unwrap(), "198.18.0.100".parse().unwrap(), port, 80, IpProtocol::TCP);
        (key, key.hash64())
    }

    #[test]
    fn a_vip_is_asked_once_per_chunk_for_its_noted_frames_from_the_asking_one_on() {
        let mut ahead = PicksAhead::new(8);
        let mut pool = [BackendState { up: true, weight: 1, ..BackendState::default() }; 3];
        // Frames 0, 2, 3 and 5 of VIP 1; frame 4 of VIP 2; frame 1 unnoted.
        let frames = [(0, 1), (2, 1), (3, 1), (4, 2), (5, 1)].map(|(frame, vip)| (vip, flow(1000 + frame)));
        for (vip, flow) in frames {
            ahead.note(vip, flow);
        }
        // The flow of the `i`-th noted frame.
        let of = |i: usize| (&frames[i].1.0, frames[i].1.1);
        let mut s = LeastLoaded::default();
        let unnoted = flow(1001);
        assert_eq!(ahead.answered(1, (&unnoted.0, unnoted.1)), None);
        assert_eq!(ahead.ask(1, (&unnoted.0, unnoted.1), &mut s, &mut pool), None, "not noted");
        // Frame 2 asks first (frame 0 went elsewhere, say): frames 2, 3 and
        // 5 are placed in one call, each seeing the ones before it counted.
        assert_eq!(ahead.answered(1, of(1)), None);
        assert_eq!(ahead.ask(1, of(1), &mut s, &mut pool), Some(Some(0)));
        assert_eq!(ahead.answered(1, of(2)), Some(Some(1)));
        // A VIP's lone new flow is left to be picked alone.
        assert_eq!(ahead.answered(2, of(3)), None);
        assert_eq!(ahead.ask(2, of(3), &mut s, &mut pool), None);
        assert_eq!(ahead.answered(1, of(4)), Some(Some(2)));
        assert_eq!(s.calls, [3]);
        assert_eq!(pool.map(|b| b.pending), [1, 1, 1]);
        ahead.clear();
        assert_eq!(ahead.answered(1, of(1)), None, "a new chunk");
    }

    #[test]
    fn a_burst_of_one_new_flow_is_noted_once() {
        let mut ahead = PicksAhead::new(8);
        let (a, b) = (flow(1), flow(2));
        for f in [a, a, a, b] {
            ahead.note(1, f);
        }
        let mut pool = [BackendState { up: true, weight: 1, ..BackendState::default() }; 2];
        let mut s = LeastLoaded::default();
        assert_eq!(ahead.ask(1, (&a.0, a.1), &mut s, &mut pool), Some(Some(0)));
        assert_eq!(s.calls, [2]);
    }

    #[test]
    fn frames_past_the_chunk_size_are_left_to_be_picked_alone() {
        let mut ahead = PicksAhead::new(2);
        let flows = [0, 1, 2].map(flow);
        for f in flows {
            ahead.note(1, f);
        }
        let mut pool = [BackendState { up: true, weight: 1, ..BackendState::default() }; 2];
        let mut s = LeastLoaded::default();
        assert!(ahead.ask(1, (&flows[0].0, flows[0].1), &mut s, &mut pool).is_some());
        assert_eq!(ahead.answered(1, (&flows[2].0, flows[2].1)), None);
        assert_eq!(ahead.ask(1, (&flows[2].0, flows[2].1), &mut s, &mut pool), None);
        assert_eq!(s.calls, [2]);
    }
}
